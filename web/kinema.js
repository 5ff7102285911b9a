// Kinema's browser helpers: SigV4 with WebCrypto (signed JSON calls and
// presigned signaling URLs), the Kinesis Video signaling WebSocket, and
// the live statistics the pages show. No dependencies.

const enc = new TextEncoder();

async function sha256Hex(data) {
  const buf = await crypto.subtle.digest("SHA-256", typeof data === "string" ? enc.encode(data) : data);
  return [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function hmac(key, data) {
  const k = await crypto.subtle.importKey("raw", typeof key === "string" ? enc.encode(key) : key,
    { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await crypto.subtle.sign("HMAC", k, enc.encode(data)));
}

const hex = (bytes) => [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
// RFC 3986 encoding, as SigV4 canonicalises query values.
const uriEncode = (s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());

function amzDate(d = new Date()) {
  return d.toISOString().replace(/[-:]/g, "").replace(/\.\d{3}/, "");
}

async function signature(creds, date, scope, canonical) {
  const toSign = ["AWS4-HMAC-SHA256", date, scope, await sha256Hex(canonical)].join("\n");
  const [day, region, service] = scope.split("/");
  let key = await hmac("AWS4" + creds.secretAccessKey, day);
  key = await hmac(key, region);
  key = await hmac(key, service);
  key = await hmac(key, "aws4_request");
  return hex(await hmac(key, toSign));
}

/// A SigV4-presigned GET URL (for WebSocket endpoints): only `host` signed.
export async function presignUrl(url, creds, { region = "us-east-1", service = "kinesisvideo", expires = 299 } = {}) {
  const u = new URL(url);
  const date = amzDate();
  const scope = `${date.slice(0, 8)}/${region}/${service}/aws4_request`;
  const params = Object.fromEntries(u.searchParams);
  Object.assign(params, {
    "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
    "X-Amz-Credential": `${creds.accessKeyId}/${scope}`,
    "X-Amz-Date": date,
    "X-Amz-Expires": String(expires),
    "X-Amz-SignedHeaders": "host",
  });
  // Temporary credentials (from STS) sign their session token too.
  if (creds.sessionToken) params["X-Amz-Security-Token"] = creds.sessionToken;
  const query = Object.keys(params).sort().map((k) => `${uriEncode(k)}=${uriEncode(params[k])}`).join("&");
  const path = u.pathname || "/";
  const canonical = ["GET", path, query, `host:${u.host}\n`, "host", await sha256Hex("")].join("\n");
  const sig = await signature(creds, date, scope, canonical);
  return `${u.protocol}//${u.host}${path}?${query}&X-Amz-Signature=${sig}`;
}

/// A signed request (header authentication; POST unless `method` says
/// otherwise); returns the Response.
export async function signedPost(url, body, creds, { region = "us-east-1", service = "kinesisvideo", contentType = "application/json", method = "POST", keepalive = false } = {}) {
  const u = new URL(url);
  const date = amzDate();
  const scope = `${date.slice(0, 8)}/${region}/${service}/aws4_request`;
  const payloadHash = await sha256Hex(body);
  const query = [...u.searchParams].map(([k, v]) => [uriEncode(k), uriEncode(v)]).sort()
    .map(([k, v]) => `${k}=${v}`).join("&");
  const token = creds.sessionToken ? `x-amz-security-token:${creds.sessionToken}\n` : "";
  const headers = `content-type:${contentType}\nhost:${u.host}\nx-amz-content-sha256:${payloadHash}\nx-amz-date:${date}\n${token}`;
  const signed = "content-type;host;x-amz-content-sha256;x-amz-date" + (token ? ";x-amz-security-token" : "");
  const canonical = [method, u.pathname, query, headers, signed, payloadHash].join("\n");
  const sig = await signature(creds, date, scope, canonical);
  return fetch(url, {
    method,
    keepalive,
    body: method === "GET" || method === "HEAD" ? undefined : body,
    headers: {
      "content-type": contentType,
      "x-amz-date": date,
      "x-amz-content-sha256": payloadHash,
      ...(creds.sessionToken ? { "x-amz-security-token": creds.sessionToken } : {}),
      authorization: `AWS4-HMAC-SHA256 Credential=${creds.accessKeyId}/${scope}, SignedHeaders=${signed}, Signature=${sig}`,
    },
  });
}

/// A Kinesis Video control-plane call; throws with the AWS error message.
export async function call(base, path, input, creds) {
  const r = await signedPost(base + path, JSON.stringify(input), creds);
  const text = await r.text();
  const out = text ? JSON.parse(text) : {};
  if (!r.ok) throw new Error(`${out.__type || r.status}: ${out.message || text}`);
  return out;
}

/// The channel's ARN, creating the channel if it does not exist yet.
export async function channelArn(base, name, creds) {
  try {
    return (await call(base, "/describeSignalingChannel", { ChannelName: name }, creds)).ChannelInfo.ChannelARN;
  } catch (e) {
    if (!String(e).includes("ResourceNotFound")) throw e;
    return (await call(base, "/createSignalingChannel", { ChannelName: name }, creds)).ChannelARN;
  }
}

/// ICE servers (TURN with short-lived credentials) for RTCPeerConnection.
export async function iceServers(base, arn, clientId, creds) {
  const out = await call(base, "/v1/get-ice-server-config", { ChannelARN: arn, ClientId: clientId, Service: "TURN" }, creds);
  return (out.IceServerList || []).map((s) => ({ urls: s.Uris, username: s.Username, credential: s.Password }));
}

/// One signaling connection (master without a client id, viewer with one).
export class Signaling {
  constructor(ws) {
    this.ws = ws;
    this.handlers = {};
    ws.addEventListener("message", (e) => {
      let m;
      try { m = JSON.parse(e.data); } catch { return; }
      let payload = null;
      if (m.messagePayload) { try { payload = JSON.parse(atob(m.messagePayload)); } catch { payload = null; } }
      (this.handlers[m.messageType] || (() => {}))(payload, m.senderClientId, m);
    });
  }

  static async open(base, arn, clientId, creds) {
    const wss = base.replace(/^http/, "ws") + "/?" + new URLSearchParams(
      clientId ? { "X-Amz-ChannelARN": arn, "X-Amz-ClientId": clientId } : { "X-Amz-ChannelARN": arn });
    const ws = new WebSocket(await presignUrl(wss, creds));
    await new Promise((resolve, reject) => {
      ws.addEventListener("open", resolve, { once: true });
      ws.addEventListener("error", () => reject(new Error("the signaling connection was refused")), { once: true });
    });
    return new Signaling(ws);
  }

  on(type, f) { this.handlers[type] = f; }

  send(action, payload, recipientClientId) {
    const m = { action, messagePayload: btoa(JSON.stringify(payload)) };
    if (recipientClientId) m.recipientClientId = recipientClientId;
    this.ws.send(JSON.stringify(m));
  }

  close() { this.ws.close(); }
}

/// Frames decoded and an estimate of the delay a viewer adds after the
/// server: half the round trip, the jitter buffer and decoding, per frame.
export async function receiveStats(pc) {
  const report = await pc.getStats();
  let s = { framesDecoded: 0, latencyMs: null, fps: null, candidate: null };
  let rtt = null;
  report.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") {
      s.framesDecoded = r.framesDecoded || 0;
      s.fps = r.framesPerSecond ?? null;
      if (r.jitterBufferEmittedCount) {
        s.jitterMs = (1000 * r.jitterBufferDelay) / r.jitterBufferEmittedCount;
        s.decodeMs = r.framesDecoded ? (1000 * r.totalDecodeTime) / r.framesDecoded : 0;
      }
    }
    if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") {
      rtt = r.currentRoundTripTime;
      s.candidate = report.get(r.localCandidateId)?.candidateType;
    }
  });
  if (s.jitterMs !== undefined) s.latencyMs = Math.round((rtt ? (rtt * 1000) / 2 : 0) + s.jitterMs + s.decodeMs);
  return s;
}

/// Fills the key, secret and (for temporary credentials) session token
/// inputs from `#key=…&secret=…&token=…` in the address (then drops them
/// from it, so they stay out of the history) or from this tab's saved
/// credentials; returns the address's other `#` parameters.
export function loadCredentials(keyInput, secretInput, tokenInput) {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("secret")) history.replaceState(null, "", location.pathname + location.search);
  const saved = savedCredentials();
  keyInput.value = hash.get("key") || saved?.accessKeyId || "";
  secretInput.value = hash.get("secret") || saved?.secretAccessKey || "";
  if (tokenInput) tokenInput.value = hash.get("token") || saved?.sessionToken || "";
  return hash;
}

/// The credentials in a page's inputs (a session token only if given).
export function credentialsFrom(keyInput, secretInput, tokenInput) {
  const creds = { accessKeyId: keyInput.value, secretAccessKey: secretInput.value };
  if (tokenInput?.value) creds.sessionToken = tokenInput.value;
  return creds;
}

/// Credentials kept for this tab only.
export function savedCredentials() {
  return JSON.parse(sessionStorage.getItem("kinema-credentials") || "null");
}

export function saveCredentials(creds) {
  sessionStorage.setItem("kinema-credentials", JSON.stringify(creds));
}
