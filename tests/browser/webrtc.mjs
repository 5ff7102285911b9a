// WebRTC in Debian's Chromium, driven by playwright-core, through Kinema's
// signaling with the official Kinesis Video WebRTC SDK for JavaScript
// (amazon-kinesis-video-streams-webrtc, its browser bundle): pages at the
// server's own https origin, fake camera for a browser master.
//
// Usage: node webrtc.mjs CONFIG.json. CONFIG: {sdk, origin, accessKeyId,
// secretAccessKey, region, scenarios: [{name, kind: "p2p"|"server"|"page",
// channel: {arn, wss, ice}, relay?, tcp?, path?, masterPath?, credentials?}]}: "p2p" is an SDK
// master (fake camera) and an SDK viewer, "server" an SDK viewer of a
// channel the server masters, "page" one of our web/ pages (after a master
// page, if given). Prints one JSON line per
// scenario: frames decoded, connection state, the selected candidate
// types, errors. Every wait is bounded.
//
// Run it inside a loopback-only network namespace: Chromium offers
// candidates on every interface it has.
import { chromium } from "playwright-core";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const profile = mkdtempSync(join(tmpdir(), "kinema-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  ignoreHTTPSErrors: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--ignore-certificate-errors", "--autoplay-policy=no-user-gesture-required",
  ],
});

// A scenario's `credentials` (temporary ones from STS, with a
// sessionToken) replace the configuration's key for its viewer.
const common = (channel, credentials) => ({
  channelARN: channel.arn,
  channelEndpoint: channel.wss,
  region: cfg.region,
  credentials: credentials || { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey },
});

async function sdkPage() {
  const page = await browser.newPage();
  page.on("console", (m) => { if (m.type() === "error") console.error("page:", m.text()); });
  await page.goto(cfg.origin + "/health");
  await page.addScriptTag({ path: cfg.sdk });
  return page;
}

// A browser master: the fake camera, one peer connection per viewer.
async function startMaster(channel) {
  const page = await sdkPage();
  await page.evaluate(async ({ common, iceServers }) => {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 } });
    const master = new KVSWebRTC.SignalingClient({ ...common, role: KVSWebRTC.Role.MASTER });
    const pcs = {};
    window.masterErrors = [];
    master.on("sdpOffer", async (offer, remoteClientId) => {
      const pc = (pcs[remoteClientId] = new RTCPeerConnection({ iceServers }));
      pc.addEventListener("icecandidate", ({ candidate }) => {
        if (candidate) master.sendIceCandidate(candidate, remoteClientId);
      });
      stream.getTracks().forEach((t) => pc.addTrack(t, stream));
      await pc.setRemoteDescription(offer);
      await pc.setLocalDescription(await pc.createAnswer());
      master.sendSdpAnswer(pc.localDescription, remoteClientId);
    });
    master.on("iceCandidate", (c, remoteClientId) => pcs[remoteClientId]?.addIceCandidate(c));
    master.on("error", (e) => window.masterErrors.push(String(e)));
    await new Promise((resolve, reject) => {
      master.on("open", resolve);
      setTimeout(() => reject(new Error("master did not open in 15 s")), 15000);
      master.open();
    });
  }, { common: common(channel), iceServers: channel.ice });
  return page;
}

// A viewer with the SDK: receive video, count decoded frames.
async function runViewer(channel, clientId, relay, tcp, credentials) {
  const page = await sdkPage();
  // TURN over TCP only: keep just the transport=tcp URIs.
  const iceServers = tcp
    ? channel.ice.map((s) => ({ ...s, urls: s.urls.filter((u) => u.includes("transport=tcp")) }))
    : channel.ice;
  return await page.evaluate(async ({ common, iceServers, clientId, relay }) => {
    const errors = [];
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: relay ? "relay" : "all" });
    const viewer = new KVSWebRTC.SignalingClient({ ...common, role: KVSWebRTC.Role.VIEWER, clientId });
    const video = document.createElement("video");
    video.muted = true;
    video.playsInline = true;
    document.body.appendChild(video);
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addEventListener("track", (e) => { video.srcObject = e.streams[0] || new MediaStream([e.track]); video.play().catch(() => {}); });
    pc.addEventListener("icecandidate", ({ candidate }) => { if (candidate) viewer.sendIceCandidate(candidate); });
    viewer.on("open", async () => {
      await pc.setLocalDescription(await pc.createOffer());
      viewer.sendSdpOffer(pc.localDescription);
    });
    viewer.on("sdpAnswer", (answer) => pc.setRemoteDescription(answer).catch((e) => errors.push(String(e))));
    viewer.on("iceCandidate", (c) => pc.addIceCandidate(c).catch((e) => errors.push(String(e))));
    viewer.on("statusResponse", (s) => errors.push("status " + JSON.stringify(s)));
    viewer.on("error", (e) => errors.push(String(e)));
    viewer.open();
    const stats = async () => {
      let frames = 0, localType = null, remoteType = null, relayProtocol = null;
      const report = await pc.getStats();
      report.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video") frames = s.framesDecoded || 0;
      });
      report.forEach((s) => {
        if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
          localType = report.get(s.localCandidateId)?.candidateType;
          relayProtocol = report.get(s.localCandidateId)?.relayProtocol ?? null;
          remoteType = report.get(s.remoteCandidateId)?.candidateType;
        }
      });
      return { frames, localType, remoteType, relayProtocol };
    };
    // Bounded: 40 s to decode 30 frames.
    const begin = performance.now();
    let s = await stats();
    while (performance.now() - begin < 40000 && s.frames < 30) {
      await new Promise((r) => setTimeout(r, 250));
      s = await stats();
    }
    const first = s.frames;
    await new Promise((r) => setTimeout(r, 1000));
    const later = await stats();
    const out = {
      framesDecoded: first, framesDecodedLater: later.frames, state: pc.connectionState,
      localType: later.localType, remoteType: later.remoteType, relayProtocol: later.relayProtocol, errors,
      codec: (await pc.getStats()) && pc.getReceivers()[0]?.track?.kind,
    };
    viewer.close();
    pc.close();
    return out;
  }, { common: common(channel, credentials), iceServers, clientId, relay: !!relay });
}

// One of our own pages (web/), reading its status element.
async function runPage(path, masterPath) {
  let master = null;
  if (masterPath) {
    master = await browser.newPage();
    await master.goto(cfg.origin + masterPath);
    const begin = Date.now();
    while (Date.now() - begin < 15000) {
      const s = await master.evaluate(() => window.kinemaStatus?.state);
      if (String(s).startsWith("master")) break;
      await master.waitForTimeout(100);
    }
  }
  const page = await browser.newPage();
  page.on("console", (m) => { if (m.type() === "error") console.error("page:", m.text()); });
  await page.goto(cfg.origin + path);
  const begin = Date.now();
  let status = {};
  while (Date.now() - begin < 40000) {
    status = await page.evaluate(() => window.kinemaStatus || {});
    if ((status.framesDecoded || 0) >= 30) break;
    await page.waitForTimeout(250);
  }
  const masterStatus = master ? await master.evaluate(() => window.kinemaStatus) : null;
  await page.close();
  if (master) await master.close();
  return {
    framesDecoded: status.framesDecoded || 0, state: status.state || null, latencyMs: status.latencyMs ?? null,
    localType: status.candidate ?? null, errors: status.errors || [], master: masterStatus,
  };
}

try {
  for (const sc of cfg.scenarios) {
    let result;
    try {
      if (sc.kind === "p2p") {
        const master = await startMaster(sc.channel);
        result = await runViewer(sc.channel, "viewer-" + sc.name, sc.relay, sc.tcp);
        result.masterErrors = await master.evaluate(() => window.masterErrors);
        await master.close();
      } else if (sc.kind === "server") {
        result = await runViewer(sc.channel, "viewer-" + sc.name, sc.relay, sc.tcp, sc.credentials);
      } else {
        result = await runPage(sc.path, sc.masterPath);
      }
    } catch (e) {
      result = { framesDecoded: 0, errors: [String(e)] };
    }
    console.log(JSON.stringify({ name: sc.name, ...result }));
  }
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
