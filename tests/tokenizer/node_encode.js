// Encodes every string of a corpus with gpt-3-encoder's own encode():
//   node node_encode.js ENCODER_JS CORPUS.json OUT.json
// OUT.json is [{"text": ..., "ids": [...], "decoded": ...}, ...]: the
// independent expectation the C tokenizer is tested against.
const fs = require('fs');
const path = require('path');
const [encoderJs, corpusPath, outPath] = process.argv.slice(2);
const { encode, decode } = require(path.resolve(encoderJs));
const corpus = JSON.parse(fs.readFileSync(corpusPath, 'utf8'));
const out = corpus.map((text) => {
  const ids = encode(text);
  return { text, ids, decoded: decode(ids) };
});
fs.writeFileSync(outPath, JSON.stringify(out));
console.log(`node: encoded ${out.length} strings with gpt-3-encoder -> ${outPath}`);
