// Plays an HLS session in Debian's Chromium with hls.js, driven by
// playwright-core. Usage: node hls_play.mjs URL [START_POSITION]
// Prints one JSON line: how far playback got, the decoded frame count,
// hls.js errors, and the PROGRAM-DATE-TIME of the first fragment shown.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const [url, startPosition = "-1"] = process.argv.slice(2);
const here = dirname(fileURLToPath(import.meta.url));
const hlsPath = createRequire(join(here, "package.json")).resolve("hls.js/dist/hls.min.js");
const profile = mkdtempSync(join(tmpdir(), "kinema-chromium-"));
// A new empty profile; playwright passes it as --user-data-dir.
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
  ],
});
try {
  const page = await browser.newPage();
  await page.setContent("<video id=v muted playsinline width=320 height=240></video>");
  await page.addScriptTag({ path: hlsPath });
  const result = await page.evaluate(async ({ url, startPosition }) => {
    const video = document.getElementById("v");
    const errors = [];
    let firstFragment = null;
    const hls = new Hls({ startPosition: Number(startPosition) });
    hls.on(Hls.Events.ERROR, (_, d) => errors.push({ type: d.type, details: d.details, fatal: d.fatal }));
    hls.on(Hls.Events.FRAG_CHANGED, (_, d) => {
      if (!firstFragment) firstFragment = { sn: d.frag.sn, programDateTime: d.frag.programDateTime };
    });
    hls.loadSource(url);
    hls.attachMedia(video);
    await new Promise((resolve) => hls.on(Hls.Events.MANIFEST_PARSED, resolve));
    await video.play();
    const begin = performance.now();
    let startedAt = null;
    // Bounded: at most 30 s for playback to advance by 2 s.
    while (performance.now() - begin < 30000) {
      if (startedAt === null && video.currentTime > 0) startedAt = video.currentTime;
      if (startedAt !== null && video.currentTime - startedAt >= 2) break;
      if (errors.some((e) => e.fatal)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    return {
      advanced: startedAt === null ? 0 : video.currentTime - startedAt,
      framesDecoded: video.getVideoPlaybackQuality().totalVideoFrames,
      mediaError: video.error ? video.error.code : null,
      errors,
      firstFragment,
    };
  }, { url, startPosition });
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
