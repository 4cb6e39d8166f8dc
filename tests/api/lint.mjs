// Lints an OpenAPI document against the official 3.x JSON schemas:
//   node lint.mjs api/openapi.yaml
import { Validator } from "@seriousme/openapi-schema-validator";

const file = process.argv[2];
const validator = new Validator();
const res = await validator.validate(file);
if (!res.valid) {
  console.log(`FAIL ${file}: not a valid OpenAPI ${validator.version} document`);
  console.log(JSON.stringify(res.errors, null, 2));
  console.log("0 passed, 1 failed");
  process.exit(1);
}
const deref = await validator.resolveRefs();
const paths = Object.keys(deref.paths || {}).length;
console.log(`ok   ${file}: valid OpenAPI ${validator.version}, ${paths} paths, every $ref resolves`);
console.log("1 passed, 0 failed");
