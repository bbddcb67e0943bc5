//! Model architectures, one file each, what they share (parameters, gradients, batches,
//! loading and saving weights), and the choice among them by `model_type`.

mod acts;
mod batch;
mod causal_lm;
pub mod decode;
pub mod gpt2;
mod grads;
pub mod head;
mod linear;
pub mod llama;
mod load;
pub mod lora;
pub mod params;
mod state;
pub mod transformer;
#[cfg(test)]
pub(crate) mod testing;

pub(crate) use acts::{add_inplace, held, Recycled};
pub(crate) use batch::loss_scale;
pub use batch::Batch;
pub use causal_lm::{BoxedModel, CausalLm};
pub use grads::{GradSink, GradView};
pub use load::{from_config, from_pretrained, from_pretrained_as, SUPPORTED_MODEL_TYPES};
pub use lora::{attach_lora, merge_lora};
pub use state::{GradSlot, Init, ModelState};
