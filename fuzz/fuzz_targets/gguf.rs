//! A GGUF file: the parser (`GgufFile::from_bytes`), then on what parses what `load_gguf`
//! does: the HF config, every tensor dequantised under its HF name (and, as
//! `hf_tensors` stops at the first error, each tensor on its own too), the tokenizer rebuilt
//! from `tokenizer.ggml.*` and loaded, encoding and decoding a short text.
#![no_main]

use libfuzzer_sys::fuzz_target;

use ferrotune::io::gguf::{hf_config, hf_tensors, GgufFile};
use ferrotune::io::gguf_tokenizer::tokenizer_from_gguf;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else { return };
    let _ = file.metadata_json();
    for info in &file.tensors {
        let _ = file.dequantize(info);
    }
    if let Ok(config) = hf_config(&file) {
        let _ = hf_tensors(&file, &config);
    }
    if let Ok(tok) = tokenizer_from_gguf(&file) {
        if let Ok(t) = tok.to_tokenizer() {
            if let Ok(ids) = t.encode("Hello, world! <|endoftext|> ünï 123\n", true) {
                let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
                let _ = t.decode(&ids, false, None);
                let _ = t.decode(&ids, true, Some(true));
            }
        }
    }
});
