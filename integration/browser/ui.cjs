// The web UI in a real browser: Debian's chromium, headless, driven by playwright-core (no
// browser download), against the real apid of the lab. Run by
// integration/tests/integration/ui.rs, which owns the daemons and the simulated agent; the
// two talk over a line protocol: this script prints `STEP <name> [args]` when it reached a
// point, and reads the test's answers (`REGISTERED <machine>`, `GO`) on stdin.
//
// Checks: sign in; a machine registered by the agent appears without a reload; selecting it
// and labelling the selection, filtering by label; its detail, its agent's console followed;
// the XSS vendor string shows as text (no <img>, no alert); a refused address reservation is
// shown in words; a BMC configured in the page; power buttons call the API; an
// assigned template's progress bar moves with the agent's reports, to Succeeded; images,
// tokens and templates screens; axe-core finds no serious or critical violation on each screen; no CSP
// violation or script error; sign out. Screenshots of each screen in SHOTS.
"use strict";

const { chromium } = require("playwright-core");
const fs = require("node:fs");
const path = require("node:path");
const readline = require("node:readline");

const [base, user, password, shots] = process.argv.slice(2);
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const XSS = "<img src=x onerror=alert(1)>";

const input = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function expectLine(prefix) {
  const { value, done } = await input.next();
  if (done || !value.startsWith(prefix)) throw new Error(`expected "${prefix}" from the test, got ${JSON.stringify(value)}`);
  return value.slice(prefix.length).trim();
}
const step = (s) => console.log(`STEP ${s}`);
let page = null;

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`script error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error" && !/Failed to load resource/.test(m.text())) problems.push(`console error: ${m.text()}`); });
  page.on("dialog", (d) => { if (d.type() === "alert") problems.push(`an alert fired: ${d.message()}`); d.accept(); });

  const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
  const axe = async (screen) => {
    await page.evaluate(axeSource);
    const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
    const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
    for (const v of result.violations) console.log(`axe ${screen}: ${v.impact} ${v.id} (${v.nodes.length}): ${v.help}`);
    if (bad.length) throw new Error(`axe on ${screen}: ${bad.map((v) => `${v.id}: ${v.help}`).join("; ")}`);
  };

  await page.goto(`${base}/`);
  await page.locator("#login").waitFor();
  await shot("sign-in");
  await axe("sign-in");
  await page.getByLabel("Username").fill(user);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("No machines yet: power one on in the provisioning network.").waitFor();
  await page.locator("#live.on").waitFor({ timeout: 10000 });
  const weight = await page.evaluate(async () => {
    const sizes = await Promise.all(["/", "/ui/app.js", "/ui/app.css"].map((u) => fetch(u).then((r) => r.arrayBuffer()).then((b) => b.byteLength)));
    return sizes.reduce((a, b) => a + b, 0);
  });
  console.log(`page weight: ${weight} bytes (HTML, script and style sheet; nothing else is loaded)`);
  await page.evaluate(() => { window.notReloaded = true; });
  await axe("machines (empty)");
  step("signed-in");

  // The test registers a machine: it must appear on its own, through the event stream.
  const name = await expectLine("REGISTERED");
  const row = page.locator(`tr[data-machine="${name}"]`);
  const seen = Date.now();
  await row.waitFor({ timeout: 15000 });
  console.log(`machine ${name} appeared ${Date.now() - seen} ms after the test registered it`);
  if (!(await page.evaluate(() => window.notReloaded))) throw new Error("the page reloaded");
  await shot("machines");
  await axe("machines");
  await page.setViewportSize({ width: 390, height: 844 });
  await shot("machines-phone");
  await page.setViewportSize({ width: 1280, height: 800 });

  // Select and act on the selection (bulk label), then filter by the label.
  await row.getByRole("checkbox").check();
  await page.getByLabel("Label to set or remove").fill("rack=r1");
  await page.getByRole("button", { name: "Label", exact: true }).click();
  await row.getByText("rack=r1").waitFor();
  await page.locator("#f-label").fill("rack=r2");
  await page.getByText("No machine matches these filters.").waitFor();
  await page.locator("#f-label").fill("rack=r1");
  await row.waitFor();
  await page.locator("#f-label").fill("");

  // Detail, keyboard first: focus the machine's link and press Enter.
  await row.getByRole("link", { name }).focus();
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: new RegExp(name) }).waitFor();
  await page.getByText(XSS).first().waitFor();
  if ((await page.locator('img[src="x"]').count()) !== 0) throw new Error("the XSS string became an element");
  await axe("machine detail");
  await shot("machine");

  // The agent's console follows without a reload (the test's agent sends a line now).
  step("detail");
  await page.locator("#agent-log").getByText("hello from the agent").waitFor({ timeout: 10000 });

  // A reserved address, and a mistake in words.
  await page.locator("#reserve-ip").fill("192.0.2.1");
  await page.locator("#reserve").click();
  await page.getByRole("alert").filter({ hasText: "no subnet" }).first().waitFor();
  // The BMC, configured in the page: Wake-on-LAN on the lab's bridge.
  await page.getByText("Add a BMC").click();
  await page.locator("#bmc-type").selectOption("wol");
  await page.locator("#bmc-address").fill("10.99.0.255");
  await page.locator("#bmc-save").click();
  // Power: the button calls the API; bmcd sends the magic packet.
  await page.locator('button[data-power="on"]').click();
  await page.locator(".flash.ok").filter({ hasText: "on" }).waitFor();
  step("powered");

  // Assign the template and watch the bar move with the agent's reports.
  await page.locator("#assign-template").selectOption("ui-test");
  await page.locator("#assign").click();
  await page.locator("#actions").waitFor();
  step("assigned");
  await page.waitForFunction(() => {
    const b = document.querySelector("#actions [role=progressbar]");
    const v = b && Number(b.getAttribute("aria-valuenow"));
    return v > 0 && v < 100;
  }, null, { timeout: 30000 });
  const moving = await page.locator("#actions [role=progressbar]").getAttribute("aria-valuenow");
  console.log(`progress bar at ${moving}% while the agent reported`);
  await shot("workflow-progress");
  await page.locator("#actions").getByText("Succeeded").waitFor({ timeout: 30000 });
  // The lifecycle history followed, newest first: Ready after Provisioning after OsAssigned.
  await page.locator("#history tbody tr").first().getByText("Ready").waitFor({ timeout: 10000 });
  const states = await page.locator("#history tbody tr td:nth-child(2)").allTextContents();
  if (states.join(",") !== "Ready,Provisioning,OsAssigned,Registered") throw new Error(`history: ${states}`);
  if (!(await page.evaluate(() => window.notReloaded))) throw new Error("the page reloaded");
  await shot("machine-installed");

  await page.getByRole("link", { name: "Workflows" }).click();
  await page.getByRole("heading", { name: "Workflows" }).waitFor();
  await page.getByText("Succeeded").first().waitFor();
  await axe("workflows");
  await shot("workflows");

  await page.getByRole("link", { name: "Templates" }).click();
  await page.getByRole("link", { name: "ui-test" }).click();
  await page.locator("#template-yaml").waitFor();
  // A broken edit: apid's validation message is shown in words.
  await page.locator("#template-yaml").fill("apiVersion: dragonfly.computer/v1\nkind: Template\nmetadata: {name: ui-test}\nspec: {actions: [{name: x, type: teleport}]}\n");
  await page.locator("#save-template").click();
  await page.getByRole("alert").filter({ hasText: "teleport" }).waitFor();
  await axe("template editor");
  await shot("template");

  await page.getByRole("link", { name: "Images" }).click();
  await page.locator("#image-name").fill("remote-os");
  await page.locator("#image-source").fill("http://10.99.0.1:8090/os.img");
  await page.locator("#image-sha256").fill("ab".repeat(32));
  await page.getByRole("button", { name: "Add image" }).click();
  await page.locator("#images").getByText("remote-os").waitFor();
  await axe("images");
  await shot("images");

  await page.getByRole("link", { name: "Tokens" }).click();
  await page.locator("#token-name").fill("ci");
  await page.getByRole("button", { name: "Create token" }).click();
  const secret = await page.locator("#new-token").textContent();
  if (!secret.startsWith("dft_")) throw new Error(`token shown: ${secret}`);
  await axe("tokens");
  await shot("tokens");

  await page.getByRole("link", { name: "Users" }).click();
  await page.getByRole("heading", { name: "Users" }).waitFor();
  await page.locator("#new-username").fill("operator1");
  await page.locator("#new-password").fill("operator1-correct-horse");
  await page.getByRole("button", { name: "Create user" }).click();
  const row1 = page.locator("tr").filter({ hasText: "operator1" });
  await row1.getByRole("button", { name: "Disable" }).click();
  await row1.getByText("disabled").waitFor();
  await axe("users");
  await shot("users");

  await page.getByRole("button", { name: "Sign out" }).click();
  await page.locator("#login").waitFor();
  const me = await page.evaluate(() => fetch("/api/auth/me").then((r) => r.status));
  if (me !== 401) throw new Error(`after sign out /api/auth/me answered ${me}`);
  if (problems.length) throw new Error(problems.join("\n"));
  await browser.close();
  step("done");
  process.exit(0);
})().catch(async (e) => {
  console.error(`FAILED: ${e.stack || e}`);
  // What the page showed when it failed, for whoever reads the test's output.
  if (page) await page.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
  process.exit(1);
});
