// End-to-end test of the browser workbench: serves wasm/dist on loopback, opens it in
// Debian's Chromium (headless, no GPU) with `?run=all`, and checks what the page reports in
// `window.cellbenchStatus`: the demo dataset (35 images, 5 labels), a finished probe and its
// 5×5 confusion matrix, no panic and no error. Prints the measured budgets as JSON and
// writes a screenshot.
//
//   node tests/web/e2e.mjs [--webgpu] [--screenshot out.png]   (default: cellbench-web-e2e.png in the temp folder)
// Needs: wasm/dist (./scripts/web.sh --build-only), playwright-core ($CELLBENCH_PLAYWRIGHT), chromium.
import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";

// playwright-core lives where scripts/test.sh installed it (outside the repository).
const modules = process.env.CELLBENCH_PLAYWRIGHT || path.join(process.env.HOME, ".cache/cellbench-playwright");
const { chromium } = createRequire(path.join(modules, "package.json"))("playwright-core");

const dist = path.resolve(process.env.CELLBENCH_WEB_DIST || "wasm/dist");
const shotArg = process.argv.indexOf("--screenshot");
const screenshot = shotArg > 0 ? process.argv[shotArg + 1] : path.join(os.tmpdir(), "cellbench-web-e2e.png");
const timeoutMs = Number(process.env.CELLBENCH_WEB_TIMEOUT_MS || 300000);
// --webgpu: features on the browser's WebGPU (here SwiftShader, Chromium's software adapter,
// enabled with --enable-unsafe-webgpu), asked for with ?compute=webgpu.
const webgpu = process.argv.includes("--webgpu");

const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm",
  ".json": "application/json", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg" };
const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  const file = path.join(dist, decodeURIComponent(url.pathname === "/" ? "/index.html" : url.pathname));
  if (!file.startsWith(dist) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
    res.writeHead(404); res.end(); return;
  }
  const body = fs.readFileSync(file);
  res.writeHead(200, { "content-type": types[path.extname(file)] || "application/octet-stream",
    "content-length": body.length });
  res.end(body);
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const port = server.address().port;

// Debian's Chromium binary itself (its /usr/bin/chromium wrapper script only adds flags).
const executablePath = process.env.CHROMIUM
  || (fs.existsSync("/usr/lib/chromium/chromium") ? "/usr/lib/chromium/chromium" : "/usr/bin/chromium");
const launchOptions = {
  executablePath,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", ...(webgpu ? ["--enable-unsafe-webgpu"] : [])],
};
// A browser that dies while starting (seen once on a loaded machine) is started again.
let browser;
for (let attempt = 1; ; attempt++) {
  try { browser = await chromium.launch(launchOptions); break; }
  catch (e) {
    if (attempt === 3) throw e;
    console.error(`chromium did not start (attempt ${attempt}): ${String(e.message).split("\n")[0]}`);
  }
}
const failures = [];
let result = {};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 2200 } });
  const consoleLines = [];
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
  // Frame gaps: the longest time between two animation frames while the notebook works.
  await page.addInitScript(() => {
    window.__longestFrameMs = 0;
    window.__longestExtractingMs = 0;
    // Every frame gap over 100 ms: [ms since measuring began, gap, extracting].
    window.__longFrames = [];
    let last = performance.now();
    const tick = (t) => {
      if (window.__measureFrames) {
        window.__longestFrameMs = Math.max(window.__longestFrameMs, t - last);
        // While backbone features are computed (the page publishes it in its status).
        let extracting = false;
        try { extracting = JSON.parse(window.cellbenchStatus || "{}").extracting === true; } catch (e) {}
        if (extracting) window.__longestExtractingMs = Math.max(window.__longestExtractingMs, t - last);
        window.__measureStart = window.__measureStart || t;
        if (t - last > 100) window.__longFrames.push([Math.round(t - window.__measureStart), Math.round(t - last), extracting]);
      }
      last = t; requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  const t0 = Date.now();
  await page.goto(`http://127.0.0.1:${port}/?run=all${webgpu ? "&compute=webgpu" : ""}`);
  await page.waitForSelector("#loading", { state: "detached", timeout: 60000 });
  const firstFrameMs = Date.now() - t0;
  await page.evaluate(() => { window.__measureFrames = true; });
  const status = async () => JSON.parse(await page.evaluate(() => window.cellbenchStatus || "{}"));
  let s = {};
  const deadline = Date.now() + timeoutMs;
  let done = false;
  for (;;) {
    s = await status();
    done = (s.trainings || []).some((t) => t !== "running") && (s.confusion_sides || []).length > 0
      && consoleLines.some((l) => l.includes("prediction finished"));
    if (done || failures.length || Date.now() > deadline) break;
    await page.waitForTimeout(250);
  }
  const runAllMs = Date.now() - t0;
  if (!done && !failures.length) {
    // Say what the page was doing, not what the next step could not find.
    failures.push(`Run all did not finish in ${timeoutMs / 1000} s; the page's status: ${JSON.stringify(s)}`);
    console.error(consoleLines.slice(-40).join("\n"));
    throw new Error("Run all did not finish");
  }
  const longestFrameMs = await page.evaluate(() => window.__longestFrameMs);
  const longestExtractingMs = await page.evaluate(() => window.__longestExtractingMs);
  const longFrames = await page.evaluate(() => window.__longFrames);
  await page.waitForTimeout(500);
  await page.screenshot({ path: screenshot });
  const demo = s;

  // Runs travel: the page's runs download as a zip of run folders, and that zip, picked
  // again, opens as runs (the same way a desktop or cluster run folder arrives). The notebook
  // downloads as a .cellbook.toml.
  const [runsDownload] = await Promise.all([page.waitForEvent("download"), page.click("#save-runs")]);
  const runsZip = path.join(fs.mkdtempSync(path.join(process.env.TMPDIR || "/tmp", "cellbench-runs-")), "runs.zip");
  await runsDownload.saveAs(runsZip);
  const zipBytes = fs.readFileSync(runsZip);
  if (zipBytes.length < 1000 || zipBytes.readUInt32LE(0) !== 0x04034b50) failures.push(`runs zip: ${zipBytes.length} bytes, not a zip`);
  const [bookDownload] = await Promise.all([page.waitForEvent("download"), page.click("#save-workbook")]);
  const book = fs.readFileSync(await bookDownload.path(), "utf8");
  if (!book.includes("Demo: white blood cells")) failures.push(`workbook download: ${book.slice(0, 200)}`);
  const before = consoleLines.length;
  await page.setInputFiles("#pick-files", runsZip);
  const importDeadline = Date.now() + 30000;
  while (!consoleLines.slice(before).some((l) => l.includes("opened 1 run(s)")) && Date.now() < importDeadline) {
    await page.waitForTimeout(200);
  }
  if (!consoleLines.slice(before).some((l) => l.includes("opened 1 run(s)"))) failures.push("the downloaded runs zip did not open as a run");
  fs.rmSync(path.dirname(runsZip), { recursive: true, force: true });

  // A user's folder, picked with "Add folder…": two class folders of real crops, a file that
  // only claims to be an image, and a note beside them. It opens in the Dataset cell; the
  // page keeps working.
  const own = fs.mkdtempSync(path.join(process.env.TMPDIR || "/tmp", "cellbench-web-"));
  const picked = path.join(own, "my cells");
  for (const label of ["Lymphocyte", "Neutrophil"]) {
    fs.mkdirSync(path.join(picked, label), { recursive: true });
    const from = path.join(dist, "assets/demo/bccd", label);
    for (const f of fs.readdirSync(from).sort().slice(0, 3)) fs.copyFileSync(path.join(from, f), path.join(picked, label, f));
  }
  fs.writeFileSync(path.join(picked, "Neutrophil", "broken.jpg"), "not a jpeg at all");
  fs.writeFileSync(path.join(picked, "README.txt"), "cells from the lab");
  await page.setInputFiles("#pick-folder", picked);
  const pickDeadline = Date.now() + 60000;
  for (;;) {
    s = await status();
    if (JSON.stringify(s.datasets) === JSON.stringify([[7, 2]]) || Date.now() > pickDeadline) break;
    await page.waitForTimeout(250);
  }
  if (JSON.stringify(s.datasets) !== JSON.stringify([[7, 2]])) failures.push(`picked folder: datasets ${JSON.stringify(s.datasets)} (expected [[7,2]])`);
  fs.rmSync(own, { recursive: true, force: true });
  s = demo;
  if (JSON.stringify(s.datasets) !== JSON.stringify([[35, 5]])) failures.push(`datasets: ${JSON.stringify(s.datasets)} (expected [[35,5]])`);
  if (!(s.trainings || []).includes("finished")) failures.push(`trainings: ${JSON.stringify(s.trainings)}`);
  if (!(s.confusion_sides || []).includes(5)) failures.push(`confusion matrices: ${JSON.stringify(s.confusion_sides)} (expected a 5×5)`);
  if (JSON.stringify(s.maps) !== JSON.stringify([35])) failures.push(`embedding maps: ${JSON.stringify(s.maps)} (expected one map of 35 points)`);
  if ((s.errors || []).length) failures.push(`errors reported: ${JSON.stringify(s.errors)}`);
  const onGpu = (s.compute || "").startsWith("WebGPU");
  if (onGpu !== webgpu) failures.push(`features computed on: ${s.compute} (expected ${webgpu ? "WebGPU" : "the CPU"})`);
  if (consoleLines.some((l) => /features continue on the CPU|does not fit this GPU/.test(l))) failures.push("the GPU failed and features fell back to the CPU");
  if (webgpu && !consoleLines.some((l) => /features of \d+ image\(s\) computed on the GPU/.test(l))) failures.push("no image's features were computed on the GPU");
  const panics = consoleLines.filter((l) => /panicked|RuntimeError|unreachable/.test(l));
  if (panics.length) failures.push(`panic in the console: ${panics.join(" | ")}`);
  // Jobs that held the page's thread for longer than a frame should take (logged by the app).
  const slowJobs = consoleLines.filter((l) => l.includes("held the page")).map((l) => l.replace(/^\w+: /, ""));
  result = { first_frame_ms: firstFrameMs, run_all_ms: runAllMs, longest_frame_ms: Math.round(longestFrameMs),
    longest_frame_extracting_ms: Math.round(longestExtractingMs),
    long_frames: longFrames,
    slow_jobs: slowJobs, status: s, screenshot };
  if (failures.length) console.error(consoleLines.slice(-40).join("\n"));
} catch (e) {
  // Every step's failure ends here (a download that never came, a page that did not load),
  // reported with the others.
  failures.push(String(e.message || e));
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(result));
if (failures.length) {
  console.error("FAILED:\n" + failures.join("\n"));
  process.exit(1);
}
console.log("web end-to-end: ok");
