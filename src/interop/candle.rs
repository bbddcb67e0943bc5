//! A ferrotune model's parameters as candle tensors, and back.
//!
//! - `to_tensors`: every parameter as a `candle_core::Tensor` (f32, the parameter's shape),
//!   keyed by the Hugging Face name `save_pretrained` writes (a tied `lm_head.weight` is
//!   absent, as in the checkpoint); `var_builder` / `to_var_map` wrap that map the way
//!   candle-transformers' models and candle training loops take weights.
//! - `load_tensors` / `load_var_map`: the reverse, through the model's own checkpoint
//!   loading, so missing, unexpected and misshapen tensors are the errors a checkpoint
//!   directory gives (`MissingTensor`, `Checkpoint`, `Shape`, each naming the tensor).
//!
//! A model with LoRA adapters is refused both ways: its base weights alone are not what it
//! computes (merge the adapters first, `models::merge_lora`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::error::{Error, Result};
use crate::io::safetensors::RawTensor;
use crate::models::CausalLm;

/// What checkpoint errors name as the source of the tensors.
const SOURCE: &str = "candle tensors";

fn refuse_lora(model: &dyn CausalLm<f32>, what: &str) -> Result<()> {
    match model.lora() {
        Some(_) => {
            Err(Error::Input(format!("the model has LoRA adapters: merge them into the weights first (models::merge_lora), then {what}")))
        }
        None => Ok(()),
    }
}

/// Every parameter of `model` as an f32 tensor on `device`, under its Hugging Face name.
pub fn to_tensors(model: &dyn CausalLm<f32>, device: &Device) -> Result<HashMap<String, Tensor>> {
    refuse_lora(model, "convert it to candle tensors")?;
    let state = model.state();
    state
        .table
        .infos()
        .iter()
        .map(|p| Ok((p.name.clone(), Tensor::from_slice(&state.params[p.range.clone()], p.shape.as_slice(), device)?)))
        .collect()
}

/// A `VarBuilder` over the model's parameters (`to_tensors`), handing them out as `dtype`:
/// what candle-transformers' `Llama::load` / `ModelForCausalLM::new` / `Model::new` take.
pub fn var_builder(model: &dyn CausalLm<f32>, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    Ok(VarBuilder::from_tensors(to_tensors(model, device)?, dtype, device))
}

/// The model's parameters as trainable candle `Var`s (f32 or `dtype`), for a candle
/// training loop; `load_var_map` brings the result back.
pub fn to_var_map(model: &dyn CausalLm<f32>, dtype: DType, device: &Device) -> Result<VarMap> {
    let map = VarMap::new();
    {
        let mut data = map.data().lock().expect("a new VarMap's lock is not poisoned");
        for (name, t) in to_tensors(model, device)? {
            data.insert(name, Var::from_tensor(&t.to_dtype(dtype)?)?);
        }
    }
    Ok(map)
}

/// Copies `tensors` (Hugging Face names; any float dtype, any device) into the model's
/// parameters. Every parameter must be there with its shape; a tensor the model has no
/// parameter for is an error (a tied `lm_head.weight` is accepted and ignored, as in a
/// checkpoint).
pub fn load_tensors(model: &mut dyn CausalLm<f32>, tensors: &HashMap<String, Tensor>) -> Result<()> {
    refuse_lora(model, "load candle tensors into it")?;
    let raw = tensors
        .iter()
        .map(|(name, t)| {
            // f16 / bf16 widen to f32 exactly; f32 stays as it is
            let values = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok((name.clone(), RawTensor::from_f32(t.dims().to_vec(), &values)))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    model.load_tensors(raw, Path::new(SOURCE))
}

/// `load_tensors` from the variables of a `VarMap` (as `to_var_map` made, after training).
pub fn load_var_map(model: &mut dyn CausalLm<f32>, vars: &VarMap) -> Result<()> {
    let tensors: HashMap<String, Tensor> = {
        let data = vars.data().lock().map_err(|_| Error::Input("the VarMap's lock is poisoned".into()))?;
        data.iter().map(|(name, v)| (name.clone(), v.as_tensor().clone())).collect()
    };
    load_tensors(model, &tensors)
}
