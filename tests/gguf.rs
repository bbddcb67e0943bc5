//! GGUF reading against references made by tests/fixtures/make_gguf_fixtures.py:
//! - gguf_tiny: a synthetic file with every metadata type and one tensor per supported
//!   ggml type, dequantised by the `gguf` package's numpy code (bit-exact comparison);
//! - gguf_smollm2: the real SmolLM2-135M-Instruct Q4_1 GGUF (from ../shared; skipped when
//!   absent) against transformers' GGUF loading: config, every tensor (HF names, shapes,
//!   Q/K unpermuted), and tokenizer ids.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use ferrotune::io::gguf::{load_gguf, GgufFile};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(p: &str) -> PathBuf {
    root().join("tests/fixtures").join(p)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn f32s_from_hex(h: &str) -> Vec<f32> {
    (0..h.len() / 8)
        .map(|i| {
            let b: Vec<u8> = (0..4).map(|j| u8::from_str_radix(&h[8 * i + 2 * j..8 * i + 2 * j + 2], 16).unwrap()).collect();
            f32::from_le_bytes(b.try_into().unwrap())
        })
        .collect()
}

fn smollm2_path() -> Option<PathBuf> {
    let p = root().join("../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipped: {} is absent (only the project machines have ../shared)", p.display());
        None
    }
}

#[test]
fn tiny_gguf_matches_the_reference_reader() {
    let exp = read_json(&fixture("gguf_tiny/expected.json"));
    let f = GgufFile::open(fixture("gguf_tiny/tiny.gguf")).unwrap();
    assert_eq!(f.version as u64, exp["version"].as_u64().unwrap());
    assert_eq!(f.alignment, exp["alignment"].as_u64().unwrap());
    assert_eq!(f.data_offset, exp["data_offset"].as_u64().unwrap());
    let meta = f.metadata_json();
    for (k, v) in exp["metadata"].as_object().unwrap() {
        assert_eq!(&meta[k], v, "metadata {k}");
    }
    assert_eq!(f.tensors.len(), exp["tensors"].as_array().unwrap().len());
    for (t, e) in f.tensors.iter().zip(exp["tensors"].as_array().unwrap()) {
        assert_eq!(t.name, e["name"].as_str().unwrap());
        assert_eq!(t.ggml_type.name(), e["ggml_type"].as_str().unwrap());
        let dims: Vec<u64> = e["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(t.dims, dims, "{}", t.name);
        assert_eq!(t.offset, e["offset"].as_u64().unwrap(), "{}", t.name);
        match e.get("values_f32_hex") {
            Some(h) => {
                let want = f32s_from_hex(h.as_str().unwrap());
                let got = f.dequantize(t).unwrap();
                assert_eq!(got.len(), want.len(), "{}", t.name);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{} value {i}: {a} vs {b}", t.name);
                }
            }
            None => {
                let e = f.dequantize(t).unwrap_err().to_string();
                assert!(e.contains(&t.ggml_type.name()) && e.contains(&t.name), "{e}");
            }
        }
    }
}

#[test]
fn smollm2_config_and_tensors_match_transformers() {
    let Some(path) = smollm2_path() else { return };
    let m = load_gguf(&path).unwrap();

    // config: every key transformers wrote that we also write has the same value
    let want = read_json(&fixture("gguf_smollm2/config.json"));
    for k in [
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
        "bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "hidden_act", "attention_bias", "mlp_bias",
        "rope_parameters",
    ] {
        assert_eq!(m.config[k], want[k], "config {k}");
    }
    assert_eq!(m.config["rope_theta"], want["rope_parameters"]["rope_theta"]);

    // tensors
    let idx = read_json(&fixture("gguf_smollm2/tensors.json"));
    let raw = std::fs::read(fixture("gguf_smollm2/tensors.f32")).unwrap();
    let vals: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let mut checked = 0;
    for e in idx["tensors"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        if name == "lm_head.weight" {
            assert!(m.config["tie_word_embeddings"].as_bool().unwrap());
            assert!(!m.tensors.contains_key(name), "tied lm_head must not be a separate tensor");
            continue;
        }
        let (shape, data) = m.tensors.get(name).unwrap_or_else(|| panic!("missing {name}"));
        let want_shape: Vec<usize> = e["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(shape, &want_shape, "{name}");
        let part = |key: &str| -> Option<&[f32]> {
            let r = e.get(key)?.as_array()?;
            let (o, n) = (r[0].as_u64().unwrap() as usize, r[1].as_u64().unwrap() as usize);
            Some(&vals[o..o + n])
        };
        let same = |what: &str, got: &[f32], want: &[f32]| {
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                let ulps = (a.to_bits() as i64 - b.to_bits() as i64).abs();
                assert!(ulps <= 1, "{name} {what}[{i}]: {a} vs {b}");
            }
        };
        same("head", &data[..128.min(data.len())], part("head").unwrap());
        let strided: Vec<f32> = e["strided_index"].as_array().unwrap().iter().map(|i| data[i.as_u64().unwrap() as usize]).collect();
        same("strided", &strided, part("strided").unwrap());
        if let Some(col0) = part("col0") {
            let cols = shape[1];
            let got: Vec<f32> = (0..shape[0]).map(|r| data[r * cols]).collect();
            same("col0", &got, col0);
        }
        let sum: f64 = data.iter().map(|&x| x as f64).sum();
        let sumsq: f64 = data.iter().map(|&x| (x as f64) * (x as f64)).sum();
        let (ws, wq) = (e["sum"].as_f64().unwrap(), e["sumsq"].as_f64().unwrap());
        assert!((sum - ws).abs() <= 1e-9 * wq.sqrt().max(1.0) * (data.len() as f64).sqrt(), "{name} sum {sum} vs {ws}");
        assert!((sumsq - wq).abs() <= 1e-9 * wq, "{name} sumsq {sumsq} vs {wq}");
        checked += 1;
    }
    assert_eq!(checked, m.tensors.len(), "every tensor we produce is checked");
}

#[test]
fn smollm2_tokenizer_matches_transformers() {
    let Some(path) = smollm2_path() else { return };
    let f = GgufFile::open(&path).unwrap();
    let t = ferrotune::io::gguf_tokenizer::tokenizer_from_gguf(&f).unwrap();
    let want = read_json(&fixture("gguf_smollm2/tokenizer_expected.json"));
    let tok = tokenizers::Tokenizer::from_str(&t.tokenizer_json).unwrap();

    // the non-vocabulary parts equal transformers' backend tokenizer after a round trip
    let ours: Value = serde_json::from_str(&tok.to_string(false).unwrap()).unwrap();
    for (k, v) in want["backend_without_model"].as_object().unwrap() {
        assert_eq!(&ours[k], v, "tokenizer.json {k}");
    }
    for (k, v) in want["model_options"].as_object().unwrap() {
        assert_eq!(&ours["model"][k], v, "tokenizer.json model.{k}");
    }
    assert_eq!(ours["model"]["vocab"].as_object().unwrap().len() as u64, want["vocab_size"].as_u64().unwrap());
    assert_eq!(ours["model"]["merges"].as_array().unwrap().len() as u64, want["num_merges"].as_u64().unwrap());

    let st = &want["special_tokens"];
    assert_eq!(t.bos_token.as_deref(), st["bos_token"].as_str());
    assert_eq!(t.eos_token.as_deref(), st["eos_token"].as_str());
    assert_eq!(t.unk_token.as_deref(), st["unk_token"].as_str());
    assert_eq!(t.pad_token.as_deref(), st["pad_token"].as_str());
    assert_eq!(t.add_bos_token, st["add_bos_token"].as_bool().unwrap());
    assert_eq!(t.chat_template.as_deref(), want["chat_template"].as_str());

    let ids = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    for case in want["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let enc = tok.encode(text, true).unwrap();
        assert_eq!(enc.get_ids(), ids(&case["ids"]).as_slice(), "ids of {text:?}");
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(enc.get_ids(), ids(&case["ids_no_special"]).as_slice(), "ids (no special) of {text:?}");
        let dec = tok.decode(&ids(&case["ids"]), false).unwrap();
        assert_eq!(dec, case["decoded"].as_str().unwrap(), "decode of {text:?}");
        let dec = tok.decode(&ids(&case["ids"]), true).unwrap();
        assert_eq!(dec, case["decoded_skip_special"].as_str().unwrap(), "decode (skip special) of {text:?}");
    }
    let chat = tok.encode(want["chat_rendered"].as_str().unwrap(), true).unwrap();
    assert_eq!(chat.get_ids(), ids(&want["chat_ids"]).as_slice());

    // the same through ferrotune's Tokenizer
    let ft = t.to_tokenizer().unwrap();
    for case in want["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(ft.encode(text, true).unwrap(), ids(&case["ids"]), "ferrotune ids of {text:?}");
        let got = ft.decode(&ids(&case["ids"]).iter().map(|&i| i as i64).collect::<Vec<_>>(), true, None).unwrap();
        assert_eq!(got, case["decoded_skip_special"].as_str().unwrap(), "ferrotune decode of {text:?}");
    }
}

#[test]
fn unsupported_architecture_and_tokenizer_are_named() {
    // a minimal GGUF claiming another architecture
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    for (k, v) in [("general.architecture", "falcon"), ("tokenizer.ggml.model", "llama")] {
        b.extend((k.len() as u64).to_le_bytes());
        b.extend(k.as_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend((v.len() as u64).to_le_bytes());
        b.extend(v.as_bytes());
    }
    let dir = std::env::temp_dir().join(format!("ferrotune-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("falcon.gguf");
    std::fs::write(&p, &b).unwrap();
    let e = load_gguf(&p).unwrap_err().to_string();
    assert!(e.contains("\"falcon\"") && e.contains("llama"), "{e}");
    let f = GgufFile::open(&p).unwrap();
    let e = ferrotune::io::gguf_tokenizer::tokenizer_from_gguf(&f).unwrap_err().to_string();
    assert!(e.contains("\"llama\"") && e.contains("SentencePiece"), "{e}");
    let e = load_gguf(dir.join("missing.gguf")).unwrap_err().to_string();
    assert!(e.contains("not found"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
