// The repository's conformance corpus (conformance/ at the repository root; QUICKSLOT_CORPUS
// overrides): every case must pass. Skipped, with the reason, while there is no corpus or while it
// is in a record format other than the one this SDK implements.
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { RECORD_FORMAT } from "../src/index.js";
import { runCorpus } from "./corpus-runner.js";

const dir = process.env.QUICKSLOT_CORPUS ?? fileURLToPath(new URL("../../../conformance", import.meta.url));
const manifestPath = `${dir}/manifest.json`;

if (!existsSync(manifestPath)) {
  test("conformance corpus", { skip: `no corpus at ${dir}` }, () => {});
} else {
  const manifest = JSON.parse(readFileSync(manifestPath, "utf8"));
  if (manifest.records_format !== RECORD_FORMAT) {
    test("conformance corpus", { skip: `corpus is records format ${manifest.records_format}, this SDK implements ${RECORD_FORMAT}` }, () => {});
  } else {
    runCorpus(dir, "conformance");
  }
}
