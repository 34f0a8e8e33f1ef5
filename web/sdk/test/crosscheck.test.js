// The crdt_core cross-check: cases tests/web/sdk_cases.py computed with the Python engine, in the
// conformance layout. tests/web/test_sdk_agrees.py writes them and points QUICKSLOT_CROSSCHECK here.
import { test } from "node:test";
import { runCorpus } from "./corpus-runner.js";

const dir = process.env.QUICKSLOT_CROSSCHECK;
if (dir) runCorpus(dir, "crosscheck");
else test("crosscheck", { skip: "QUICKSLOT_CROSSCHECK not set (tests/web/test_sdk_agrees.py sets it)" }, () => {});
