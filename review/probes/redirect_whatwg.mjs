import fs from "fs";
const cases = JSON.parse(fs.readFileSync("/tmp/rv/redirects.json"));
const base = ["https://app.example.com/page/sub", "http://app.example.com/page/sub"];
function allowed(u) {
  const h = u.hostname, p = u.port;
  if (u.protocol !== "http:" && u.protocol !== "https:") return false;
  if (u.username || u.password) return false;
  if (h === "app.example.com") return p === "";
  if (h.endsWith(".good.example")) return p === "";
  if (h === "admin.example.com") return p === "8443";
  return false;
}
let bad = [], safe = 0;
for (const [s, ok] of cases) {
  if (!ok) continue;
  safe++;
  for (const b of base) {
    let u; try { u = new URL(s, b); } catch (e) { bad.push([s, b, "throws"]); continue; }
    if (!allowed(u)) bad.push([s, b, u.href]);
    // a path resolving to //... could be re-read as scheme-relative by a later hop
    if (u.pathname.startsWith("//")) bad.push([s, b, "path //", u.href]);
  }
}
console.log("safe", safe, "bad", bad.length);
for (const x of bad.slice(0, 30)) console.log(JSON.stringify(x));
