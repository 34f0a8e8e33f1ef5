// Builds the app into dist/: one bundled, minified script (the app, the SDK and its dependencies)
// and one stylesheet, each named by a hash of its content (the relay serves those as immutable),
// index.html pointing at them, the service worker with the shell's list and version, the manifest
// and the icon. No inline script or style anywhere: the relay's Content-Security-Policy forbids it.

import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, "src");
const dist = join(here, "dist");

/** @param {string | Uint8Array} bytes */
const hash = (bytes) => createHash("sha256").update(bytes).digest("hex").slice(0, 12);

const out = await build({
  entryPoints: [join(src, "main.js"), join(src, "style.css")],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome100", "firefox100", "safari15"],
  outdir: "out",
  write: false,
  legalComments: "none",
  logLevel: "warning",
});
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });
const names = {};
for (const file of out.outputFiles) {
  const ext = file.path.endsWith(".css") ? "css" : "js";
  const name = `app-${hash(file.contents)}.${ext}`;
  writeFileSync(join(dist, name), file.contents);
  names[ext] = name;
}
const index = readFileSync(join(src, "index.html"), "utf8").replace("{{JS}}", names.js).replace("{{CSS}}", names.css);
writeFileSync(join(dist, "index.html"), index);
for (const file of ["manifest.webmanifest", "icon.svg"]) copyFileSync(join(src, file), join(dist, file));
const shell = ["./", names.js, names.css, "manifest.webmanifest", "icon.svg"];
const version = `quickslot-${hash(index + names.js + names.css)}`;
const sw = readFileSync(join(src, "sw.js"), "utf8").replace("__VERSION__", version).replace("__SHELL__", JSON.stringify(shell));
writeFileSync(join(dist, "sw.js"), sw);
console.log(`built ${dist}: ${names.js}, ${names.css}, ${version}`);
