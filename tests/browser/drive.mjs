// Drives serve/static/index.html in headless Chromium (system /usr/bin/chromium via playwright-core) and
// prints one JSON object with what the page showed. tests/test_serve_browser.py makes the assertions.
//
//   node tests/browser/drive.mjs http://127.0.0.1:PORT [chromium-path]
//
// Steps: load "/", pick the synthetic sample, left-click (positive point), right-click (negative point),
// drag a box, press "Segment everything"; after each, wait for the overlay canvas to be repainted and
// snapshot it as a PNG data URL.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const [url, executablePath = "/usr/bin/chromium"] = process.argv.slice(2);
if (!url) {
  console.error("usage: node drive.mjs URL [chromium]");
  process.exit(2);
}
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "edgesam-chromium-"));
const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"];
const result = { steps: [], pageErrors: [], consoleErrors: [] };
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath, headless: true, args: ARGS, viewport: { width: 1280, height: 900 }, timeout: 60000,
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(30000);
  page.on("pageerror", (e) => result.pageErrors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") result.consoleErrors.push(m.text()); });
  // Only the server under test may be contacted.
  await page.route("**/*", (route) => (route.request().url().startsWith(url) || route.request().url().startsWith("data:")
    ? route.continue() : route.abort()));

  await page.goto(url + "/", { waitUntil: "load" });
  await page.waitForSelector('button[data-sample="shapes"]');
  result.health = await page.textContent("#health");
  result.banner = await page.textContent("#banner");
  await page.click('button[data-sample="shapes"]');
  await page.waitForFunction(() => window.edgesam && window.edgesam.ready === true);

  const snapshot = () => page.evaluate(() => {
    const o = document.getElementById("overlay"), im = document.getElementById("image");
    const px = o.getContext("2d").getImageData(0, 0, o.width, o.height).data;
    let painted = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) painted++;
    const ipx = im.getContext("2d").getImageData(0, 0, im.width, im.height).data;
    let imageNonZero = 0;
    for (let i = 0; i < ipx.length; i += 4) if (ipx[i] || ipx[i + 1] || ipx[i + 2]) imageNonZero++;
    return { width: o.width, height: o.height, painted, imageNonZero, overlayPng: o.toDataURL("image/png"),
             version: window.edgesam.overlayVersion, request: window.edgesam.lastRequest,
             response: window.edgesam.lastResponse, segmentMs: window.edgesam.timings.segmentMs,
             embeddingId: window.edgesam.state.embeddingId, status: document.getElementById("status").textContent };
  });
  const toClient = async (x, y) => {
    const box = await page.locator("#marks").boundingBox();
    const size = await page.evaluate(() => [document.getElementById("marks").width, document.getElementById("marks").height]);
    return [box.x + (x + 0.5) * box.width / size[0], box.y + (y + 0.5) * box.height / size[1]];
  };
  const waitRepaint = (v) => page.waitForFunction((prev) => window.edgesam.overlayVersion > prev, v);

  const before = await snapshot();
  result.steps.push({ name: "loaded", ...before });
  const [w, h] = [before.width, before.height];

  // 1. left click = positive point
  const p1 = [Math.round(w * 0.5), Math.round(h * 0.5)];
  let [cx, cy] = await toClient(...p1);
  await page.mouse.click(cx, cy, { button: "left" });
  await waitRepaint(before.version);
  result.steps.push({ name: "positive", click: p1, ...(await snapshot()) });

  // 2. right click = negative point
  const p2 = [Math.round(w * 0.2), Math.round(h * 0.25)];
  const v2 = (await snapshot()).version;
  [cx, cy] = await toClient(...p2);
  await page.mouse.click(cx, cy, { button: "right" });
  await waitRepaint(v2);
  result.steps.push({ name: "negative", click: p2, ...(await snapshot()) });

  // 3. drag = box
  const v3 = (await snapshot()).version;
  const [bx0, by0] = await toClient(Math.round(w * 0.3), Math.round(h * 0.3));
  const [bx1, by1] = await toClient(Math.round(w * 0.7), Math.round(h * 0.8));
  await page.mouse.move(bx0, by0);
  await page.mouse.down();
  await page.mouse.move((bx0 + bx1) / 2, (by0 + by1) / 2, { steps: 4 });
  await page.mouse.move(bx1, by1, { steps: 4 });
  await page.mouse.up();
  await waitRepaint(v3);
  result.steps.push({ name: "box", ...(await snapshot()) });

  // 4. segment everything: every annotation painted in its own colour
  const v4 = (await snapshot()).version;
  await page.click("#everything");
  await waitRepaint(v4);
  const ev = await snapshot();
  result.steps.push({ name: "everything", ...ev, everything: await page.evaluate(() => window.edgesam.lastEverything) });
  if (process.env.EDGESAM_SCREENSHOT) await page.screenshot({ path: process.env.EDGESAM_SCREENSHOT, fullPage: true });
  result.ok = true;
} catch (e) {
  result.ok = false;
  result.error = String(e && e.stack || e);
} finally {
  if (context) await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(result));
