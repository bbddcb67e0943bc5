//! Fine-tune a tiny fixture with ferrotune for a few AdamW steps, hand the weights to
//! candle-transformers (`llama`, `qwen2`, `mistral`) and generate greedily with candle; our
//! own greedy continuation is printed beside it and must be the same.
//!
//!     cargo run --release --no-default-features --features candle --example candle_generate
//!     cargo run --release --no-default-features --features candle --example candle_generate -- --family qwen2

use std::error::Error;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{llama, mistral, qwen2};
use ferrotune::generate::argmax;
use ferrotune::interop::candle::var_builder;
use ferrotune::interop::candle_configs::{llama_config, mistral_config, qwen2_config};
use ferrotune::models::{from_pretrained, Batch, BoxedModel};
use ferrotune::optim::adamw::{AdamW, AdamWConfig};

const FAMILIES: [&str; 3] = ["llama", "qwen2", "mistral"];
const STEPS: usize = 30;
const NEW_TOKENS: usize = 12;

/// The sequence the model is taught: a cycle of six ids, 24 long.
fn training_ids() -> Vec<i64> {
    [10, 20, 30, 40, 50, 60].into_iter().cycle().take(24).collect()
}

/// A few full-batch AdamW steps on `ids` (labels = ids: next-token loss); prints the loss.
fn fine_tune(model: &mut BoxedModel, ids: &[i64]) -> Result<(), Box<dyn Error>> {
    let cfg = AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut opt = AdamW::new(cfg, &model.state().table, &model.state().grad_slots(), &[])?;
    let batch = Batch { ids, mask: None, labels: Some(ids), b: 1, t: ids.len() };
    for step in 0..STEPS {
        let loss = model.forward_backward(&batch, None)?;
        let (params, grads) = model.state_mut().params_and_grads();
        opt.step(params, grads);
        model.state_mut().zero_grad();
        if step % 10 == 0 || step + 1 == STEPS {
            println!("  step {step:2}: loss {:.4}", loss.loss_sum / loss.count as f64);
        }
    }
    model.state_mut().training = false;
    Ok(())
}

/// A candle-transformers model of one family, built from a ferrotune model's weights.
enum CandleLm {
    Llama(llama::Llama, llama::Config),
    Qwen2(qwen2::ModelForCausalLM),
    Mistral(mistral::Model),
}

impl CandleLm {
    fn new(family: &str, model: &BoxedModel) -> Result<Self, Box<dyn Error>> {
        let vb = var_builder(model.as_ref(), DType::F32, &Device::Cpu)?;
        Ok(match family {
            "llama" => {
                let cfg = llama_config(model.as_ref())?;
                CandleLm::Llama(llama::Llama::load(vb, &cfg)?, cfg)
            }
            "qwen2" => CandleLm::Qwen2(qwen2::ModelForCausalLM::new(&qwen2_config(model.as_ref())?, vb)?),
            "mistral" => CandleLm::Mistral(mistral::Model::new(&mistral_config(model.as_ref())?, vb)?),
            other => return Err(format!("unknown family {other:?} (one of {FAMILIES:?})").into()),
        })
    }

    /// The next-token logits after `ids`. The whole prefix is run each time: candle's
    /// sliding-window mask applies to a multi-token forward only, and the models are tiny.
    fn last_logits(&mut self, ids: &[u32]) -> Result<Vec<f32>, Box<dyn Error>> {
        let x = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
        let logits = match self {
            CandleLm::Llama(net, cfg) => net.forward(&x, 0, &mut llama::Cache::new(false, DType::F32, cfg, &Device::Cpu)?)?,
            CandleLm::Qwen2(net) => {
                net.clear_kv_cache();
                net.forward(&x, 0)?
            }
            CandleLm::Mistral(net) => {
                net.clear_kv_cache();
                net.forward(&x, 0)?
            }
        };
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// Greedy continuation of `prompt` by ferrotune's own forward (the last row of the logits).
fn ferrotune_greedy(model: &mut BoxedModel, prompt: &[i64]) -> Result<Vec<i64>, Box<dyn Error>> {
    let (mut ids, v) = (prompt.to_vec(), model.vocab_size());
    for _ in 0..NEW_TOKENS {
        model.forward(&Batch { ids: &ids, mask: None, labels: None, b: 1, t: ids.len() })?;
        let last = &model.logits()[(ids.len() - 1) * v..];
        ids.push(argmax(last) as i64);
    }
    Ok(ids[prompt.len()..].to_vec())
}

fn candle_greedy(net: &mut CandleLm, prompt: &[i64]) -> Result<Vec<i64>, Box<dyn Error>> {
    let mut ids: Vec<u32> = prompt.iter().map(|&i| i as u32).collect();
    for _ in 0..NEW_TOKENS {
        let next = argmax(&net.last_logits(&ids)?) as u32;
        ids.push(next);
    }
    Ok(ids[prompt.len()..].iter().map(|&i| i as i64).collect())
}

fn run(family: &str) -> Result<(), Box<dyn Error>> {
    let fixture = format!("tests/fixtures/{family}_tiny");
    println!("{family}: fine-tuning {fixture} for {STEPS} steps");
    let mut model = from_pretrained(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(fixture))?;
    fine_tune(&mut model, &training_ids())?;

    let prompt = [10, 20, 30];
    let mut net = CandleLm::new(family, &model)?;
    let by_candle = candle_greedy(&mut net, &prompt)?;
    let by_us = ferrotune_greedy(&mut model, &prompt)?;
    println!("  prompt {prompt:?}\n  candle    {by_candle:?}\n  ferrotune {by_us:?}");
    if by_candle != by_us {
        return Err(format!("{family}: candle's greedy tokens differ from ferrotune's").into());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let families: Vec<&str> = match args.as_slice() {
        [] => FAMILIES.to_vec(),
        [flag, family] if flag == "--family" => vec![family.as_str()],
        _ => return Err(format!("usage: candle_generate [--family {}]", FAMILIES.join("|")).into()),
    };
    for family in families {
        run(family)?;
    }
    Ok(())
}
