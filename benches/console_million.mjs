// Times the console's pages in Chromium against ADMIN_URL: from navigation
// to the first rows (Events) or the store card (Overview), five times each.
import { chromium } from "../tests/browser/node_modules/playwright-core/index.mjs";

const base = process.env.ADMIN_URL;
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
const views = [
  ["Events, no filter", "/events", "table[aria-label=Events] tbody tr"],
  ["Events, one source and a type glob", "/events?source=stripe&type=payment_intent.*", "table[aria-label=Events] tbody tr"],
  ["Events, one wedding", "/events?context.wedding_id=w-7", "table[aria-label=Events] tbody tr"],
  ["Overview", "/", "section.card dl"],
];
for (const [name, path, ready] of views) {
  const times = [];
  let rows = 0;
  for (let i = 0; i < 5; i++) {
    const page = await browser.newPage();
    const start = Date.now();
    await page.goto(base + path);
    await page.locator(ready).first().waitFor({ timeout: 30000 });
    times.push(Date.now() - start);
    rows = await page.locator(ready).count();
    await page.close();
  }
  times.sort((a, b) => a - b);
  console.log(`${name}: median ${times[2]} ms, worst ${times[4]} ms (${rows} rows)`);
}
await browser.close();
