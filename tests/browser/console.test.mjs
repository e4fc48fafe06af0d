// The operator console in Debian's Chromium, driven by playwright-core,
// against the real sidecar binary and real HTTP targets on loopback:
// filters change the list and the URL, an event's detail shows its
// attempts, a redeliver reaches the target (x-redelivery: true), a bulk
// dry run's count is what is queued, a dead letter is replayed from the
// page, the token prompt works, read-only hides the buttons, a rebound
// Host is refused, and the browser's console shows no error and no CSP
// violation. Screenshots for the README are written to docs/.
//
// SIDECAR_BIN names the binary (default: target/debug/wedsync-sidecar);
// CHROMIUM the browser (default: /usr/bin/chromium); SCREENSHOT_DIR where
// the screenshots go (default: a temporary directory; `docs` for the
// README's).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.SIDECAR_BIN || path.join(ROOT, "target/debug/wedsync-sidecar");
const SECRET = "whsec_console_secret_0123456789";
const TOKEN = "admin-token-console-0123456789";
const EVENTS = 20;
const SHOTS = process.env.SCREENSHOT_DIR
  ? path.resolve(process.env.SCREENSHOT_DIR)
  : fs.mkdtempSync(path.join(os.tmpdir(), "console-shots-"));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, check, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what);
    await sleep(50);
  }
}

/// A target answering `status` to every delivery, keeping what it got.
function target(status, body) {
  const seen = [];
  const server = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      seen.push({ id: req.headers["x-event-id"], redelivery: req.headers["x-redelivery"] });
      res.writeHead(status, { "content-type": "text/plain" });
      res.end(body);
    });
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () =>
    resolve({ server, seen, addr: "127.0.0.1:" + server.address().port })));
}

/// The sidecar on `admin` (YAML lines), its two targets; resolves once ready.
async function sidecar(name, admin, ok, no) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sidecar-console-" + name + "-"));
  const config = [
    "listen: { egress: 127.0.0.1:0, ingress: 127.0.0.1:0, admin: 127.0.0.1:0 }",
    "store: { path: " + path.join(dir, "data") + " }",
    "drain_delay: 0s",
    admin,
    "upstreams:",
    "  ok: { backends: [" + ok.addr + "] }",
    "  no: { backends: [" + no.addr + "] }",
    "webhooks:",
    "  stripe:",
    "    path: /webhooks/stripe",
    "    verify: { kind: stripe, secrets: [" + SECRET + "] }",
    "    context: { wedding_id: /data/object/metadata/wedding_id }",
    "    routes: [{ events: [\"payment_intent.*\"], targets: [ok] }, { events: [\"charge.*\"], targets: [ok, no] }]",
    "    delivery: { path: /events, timeout: 2s, max_attempts: 3, backoff: { initial: 50ms, max: 100ms } }",
  ].join("\n") + "\n";
  fs.writeFileSync(path.join(dir, "sidecar.yaml"), config);
  const ready = path.join(dir, "ready.json");
  const log = fs.openSync(path.join(dir, "sidecar.log"), "w");
  const child = spawn(BIN, ["run", "-c", path.join(dir, "sidecar.yaml"), "--ready-file", ready],
    { stdio: ["ignore", log, log], env: { ...process.env, RUST_LOG: "info" } });
  const addresses = await until("the sidecar to be ready (" + dir + ")", () =>
    fs.existsSync(ready) && JSON.parse(fs.readFileSync(ready, "utf8")), 30000);
  return { child, dir, admin: "http://localhost:" + addresses.admin.split(":").pop(), ingress: addresses.ingress };
}

function post(ingress, id, type, wedding) {
  const body = JSON.stringify({ id, type, data: { object: { metadata: { wedding_id: wedding } } } });
  const t = Math.floor(Date.now() / 1000);
  const v1 = crypto.createHmac("sha256", SECRET).update(t + "." + body).digest("hex");
  return new Promise((resolve, reject) => {
    const req = http.request("http://" + ingress + "/webhooks/stripe", {
      method: "POST", headers: { "content-type": "application/json", "stripe-signature": "t=" + t + ",v1=" + v1 },
    }, (res) => { res.resume(); res.on("end", () => resolve(res.statusCode)); });
    req.on("error", reject);
    req.end(body);
  });
}

function adminGet(base, p, headers = {}) {
  return new Promise((resolve, reject) => {
    http.get(base + p, { headers }, (res) => {
      let text = "";
      res.on("data", (c) => (text += c));
      res.on("end", () => resolve({ status: res.statusCode, text }));
    }).on("error", reject);
  });
}

let browser, ok, no, main, guarded, readOnly;
const problems = [];

before(async () => {
  ok = await target(204, "");
  no = await target(400, "bad payload: wedding unknown");
  main = await sidecar("main", "", ok, no);
  guarded = await sidecar("token", "admin: { token: " + TOKEN + " }", ok, no);
  readOnly = await sidecar("read-only", "admin: { read_only: true }", ok, no);
  for (let n = 0; n < EVENTS; n++) {
    const payment = n % 2 === 0;
    const type = payment ? "payment_intent.succeeded" : "charge.failed";
    assert.equal(await post(main.ingress, "evt_" + n, type, "w-" + (n % 4)), 202);
  }
  assert.equal(await post(readOnly.ingress, "evt_ro", "charge.failed", "w-1"), 202);
  // Every event finished: payments delivered, charges delivered to ok and dead at no.
  await until("every event to finish", async () => {
    const page = JSON.parse((await adminGet(main.admin, "/admin/events?status=pending")).text);
    return page.items.length === 0 && ok.seen.length >= EVENTS;
  });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    // A name that resolves to loopback, as DNS rebinding makes one.
    args: ["--no-sandbox", "--host-resolver-rules=MAP rebound.example 127.0.0.1"],
  });
});

after(async () => {
  await browser?.close();
  for (const s of [main, guarded, readOnly]) {
    s?.child.kill("SIGKILL");
    if (s) fs.rmSync(s.dir, { recursive: true, force: true, maxRetries: 5 });
  }
  if (!process.env.SCREENSHOT_DIR) fs.rmSync(SHOTS, { recursive: true, force: true });
  ok?.server.close();
  no?.server.close();
  assert.deepEqual(problems, [], "the browser's console showed errors or CSP violations");
});

/// A fresh page whose console errors and failed requests are kept.
async function open(url) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") problems.push(url + ": " + m.text()); });
  page.on("pageerror", (e) => problems.push(url + ": " + e.message));
  await page.goto(url);
  return page;
}

test("the overview shows the store, the queue, recent events, services and backends", async () => {
  const page = await open(main.admin + "/");
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  const store = page.locator("section.card", { has: page.getByRole("heading", { name: "Store" }) });
  await store.getByText("embedded").waitFor();
  const events = page.locator("section.card", { has: page.getByRole("heading", { name: "Events" }) });
  await events.getByRole("row", { name: /Last 5 min/ }).getByText(String(EVENTS), { exact: true }).first().waitFor();
  const upstreams = page.getByRole("table", { name: "Upstream groups" });
  await upstreams.getByRole("cell", { name: ok.addr }).waitFor();
  await page.screenshot({ path: path.join(SHOTS, "console-overview.png"), fullPage: true });
  await page.context().close();
});

test("filters change the list and the URL, and a shared URL shows the same list", async () => {
  const page = await open(main.admin + "/events");
  const table = page.getByRole("table", { name: "Events" });
  await table.getByRole("row").nth(1).waitFor();
  assert.equal(await table.locator("tbody tr").count(), EVENTS);
  await page.getByLabel("Type").fill("charge.*");
  await page.getByLabel("Status").selectOption("partial");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForURL(/type=charge\.\*.*status=partial|status=partial.*type=charge/);
  await until("the filtered list", async () => (await table.locator("tbody tr").count()) === EVENTS / 2);
  await page.getByText("10 of about 10").waitFor();
  for (const text of await table.locator("tbody tr td:nth-child(3)").allTextContents()) {
    assert.match(text, /^evt_\d*[13579]$/, "only the charges (odd events)");
  }
  await page.getByLabel("Context field").fill("wedding_id");
  await page.getByLabel("Context value").fill("w-1");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForURL(/context\.wedding_id=w-1/);
  await until("the wedding's events", async () => (await table.locator("tbody tr").count()) === 5);
  const shared = await open(page.url());
  await until("the shared view", async () =>
    (await shared.getByRole("table", { name: "Events" }).locator("tbody tr").count()) === 5);
  assert.equal(await shared.getByLabel("Context value").inputValue(), "w-1");
  await page.context().close();
  await shared.context().close();
});

test("an event found by id shows every attempt, and Redeliver reaches the target again", async () => {
  const page = await open(main.admin + "/events");
  await page.getByLabel("Event id").fill("evt_3");
  await page.getByRole("button", { name: "Find" }).click();
  await page.waitForURL(/\/event\?source=stripe&id=evt_3/);
  const noTarget = page.getByRole("region", { name: "Target no" });
  const attempts = noTarget.getByRole("table", { name: "Attempts to no" });
  await attempts.getByRole("cell", { name: "400", exact: true }).waitFor();
  await attempts.getByText("bad payload: wedding unknown").waitFor();
  const okTarget = page.getByRole("region", { name: "Target ok" });
  await okTarget.getByRole("cell", { name: "204", exact: true }).waitFor();
  await page.getByRole("region", { name: "Context" }).getByText("w-3").waitFor();
  await page.screenshot({ path: path.join(SHOTS, "console-event.png"), fullPage: true });
  const before = ok.seen.filter((s) => s.id === "evt_3").length;
  await okTarget.getByRole("button", { name: "Redeliver", exact: true }).click();
  await page.getByText(/Queued again for ok/).waitFor();
  const again = await until("the redelivery", () => ok.seen.find((s) => s.id === "evt_3" && s.redelivery === "true"));
  assert.equal(again.redelivery, "true");
  assert.equal(ok.seen.filter((s) => s.id === "evt_3").length, before + 1);
  await page.context().close();
});

test("bulk redeliver counts first, and queues exactly what it counted", async () => {
  const page = await open(main.admin + "/events?type=payment_intent.*");
  await page.getByRole("table", { name: "Events" }).locator("tbody tr").first().waitFor();
  const before = ok.seen.filter((s) => s.redelivery === "true").length;
  await page.getByRole("button", { name: "Redeliver all matching" }).click();
  await page.getByText("10 events match this filter").waitFor();
  await page.getByRole("button", { name: "Confirm" }).click();
  await page.getByText("Queued 10 events again.").waitFor();
  await until("ten redeliveries", () => ok.seen.filter((s) => s.redelivery === "true").length === before + 10);
  await sleep(300);
  assert.equal(ok.seen.filter((s) => s.redelivery === "true").length, before + 10, "no more than counted");
  await page.context().close();
});

test("a dead letter is replayed from the Dead letters page", async () => {
  const page = await open(main.admin + "/");
  await page.getByRole("link", { name: "Dead letters" }).click();
  await page.waitForURL(/\/events\?status=dead/);
  const table = page.getByRole("table", { name: "Events" });
  await until("the dead letters", async () => (await table.locator("tbody tr").count()) === EVENTS / 2);
  const row = table.getByRole("row", { name: /evt_5\b/ });
  const before = no.seen.filter((s) => s.id === "evt_5").length;
  await row.getByRole("button", { name: /Replay/ }).click();
  await page.getByText("Replayed evt_5 to no.").waitFor();
  await until("the replay", () => no.seen.filter((s) => s.id === "evt_5").length === before + 1);
  await row.getByRole("button", { name: /Purge/ }).waitFor();
  await page.context().close();
});

test("Next and Previous walk the pages, and Live adds new events at the top", async () => {
  for (let n = 0; n < 45; n++) {
    assert.equal(await post(main.ingress, "evt_page_" + n, "payment_intent.created", "w-9"), 202);
  }
  const page = await open(main.admin + "/events?context.wedding_id=w-9");
  const table = page.getByRole("table", { name: "Events" });
  const ids = async () => table.locator("tbody tr td:nth-child(3)").allTextContents();
  await page.getByText("45 of about 45").waitFor();
  const wedding = (await page.getByRole("textbox", { name: "Context value" }).inputValue());
  assert.equal(wedding, "w-9");
  await page.getByLabel("Source").fill("stripe");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForURL(/source=stripe/);
  await page.getByText("45 of about 45").waitFor();
  const all = await ids();
  assert.equal(all[0], "evt_page_44", "newest first");
  // Fifty per page: the wedding's 45 and the rest of the log (65 events).
  await page.getByLabel("Context field").fill("");
  await page.getByLabel("Context value").fill("");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.getByText(/^50 of about/).waitFor();
  const first = await ids();
  await page.getByRole("button", { name: "Next" }).click();
  await page.waitForURL(/cursor=/);
  await until("the second page", async () => (await ids())[0] !== first[0]);
  const second = await ids();
  assert.ok(second.length > 0 && second.every((id) => !first.includes(id)), "no event on both pages");
  await page.getByRole("button", { name: "Previous" }).click();
  await until("the first page again", async () => (await ids())[0] === first[0]);
  assert.ok(await page.getByRole("button", { name: "Previous" }).isDisabled());
  await page.getByRole("checkbox", { name: "Live" }).check();
  assert.equal(await post(main.ingress, "evt_live", "payment_intent.created", "w-9"), 202);
  await until("the new event at the top", async () => (await ids())[0] === "evt_live", 10000);
  await page.context().close();
});

test("the config page shows the effective config, redacted, and the last reload", async () => {
  const file = path.join(readOnly.dir, "sidecar.yaml");
  fs.writeFileSync(file + ".new", fs.readFileSync(file, "utf8") + "drain_delay_typo: 1s\n");
  fs.renameSync(file + ".new", file);
  await until("the rejected reload", async () =>
    JSON.parse((await adminGet(readOnly.admin, "/admin/overview")).text).last_reload?.result === "rejected");
  const page = await open(readOnly.admin + "/config");
  await page.getByRole("heading", { name: "Last reload" }).waitFor();
  await page.getByText("rejected").waitFor();
  await page.getByText(/drain_delay_typo/).first().waitFor();
  const config = await page.getByLabel("Effective config").textContent();
  assert.match(config, /"webhooks"/);
  assert.ok(!config.includes(SECRET), "the webhook secret is redacted");
  await page.context().close();
});

test("with admin.token the page asks for it and keeps it out of URLs and cookies", async () => {
  const page = await open(guarded.admin + "/events");
  await page.getByLabel("Admin token").fill(TOKEN);
  await page.getByRole("button", { name: "Use token" }).click();
  await page.getByRole("heading", { name: "Events" }).waitFor();
  await page.getByRole("table", { name: "Events" }).or(page.getByText("No event matches.")).first().waitFor();
  assert.ok(!page.url().includes(TOKEN));
  assert.deepEqual(await page.context().cookies(), []);
  await page.context().close();
});

test("read-only serves the pages without any button that changes state", async () => {
  const page = await open(readOnly.admin + "/events?status=dead");
  await until("the dead letter", async () =>
    (await page.getByRole("table", { name: "Events" }).locator("tbody tr").count()) === 1, 15000);
  for (const name of ["Redeliver all matching", "Replay", "Purge"]) {
    assert.equal(await page.getByRole("button", { name }).count(), 0, name);
  }
  await page.getByRole("link", { name: "evt_ro" }).click();
  await page.getByRole("region", { name: "Target no" }).waitFor();
  assert.equal(await page.getByRole("button", { name: /Redeliver|Replay|Purge/ }).count(), 0);
  await page.context().close();
});

test("a page on a rebound name is refused with 421", async () => {
  const port = main.admin.split(":").pop();
  const context = await browser.newContext();
  const page = await context.newPage();
  const answer = await page.goto("http://rebound.example:" + port + "/");
  assert.equal(answer.status(), 421);
  const api = await page.goto("http://rebound.example:" + port + "/admin/events");
  assert.equal(api.status(), 421);
  await context.close();
  const direct = await adminGet(main.admin, "/admin/overview", { host: "rebound.example" });
  assert.equal(direct.status, 421);
});
