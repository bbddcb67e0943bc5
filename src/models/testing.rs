//! Checks every architecture's tests share.

use super::{Batch, CausalLm};

/// LoRA (r 2, dropout 0.1) on every module the architecture has, with random B matrices.
pub fn attach_lora_everywhere<M: CausalLm<f32>>(m: &mut M) {
    let names: Vec<String> = m.lora_modules().1.iter().map(|x| x.name.clone()).collect();
    let spec = super::lora::LoraSpec { r: 2, alpha: 4.0, dropout: 0.1, use_rslora: false };
    super::attach_lora(m, &names, spec, 2).unwrap();
    randomise_lora_b(m);
}

/// Random values for the LoRA B matrices (zero at first, which would hide the adapters).
pub fn randomise_lora_b<M: CausalLm<f32> + ?Sized>(m: &mut M) {
    let mut r = crate::rng::SplitMix64::new(4);
    for info in m.state().table.infos().to_vec() {
        if info.name.ends_with("lora_B.weight") {
            m.state_mut().params[info.range].iter_mut().for_each(|x| *x = r.next_f64() as f32 - 0.5);
        }
    }
}

/// Two accumulating forward_backward calls with gradient checkpointing off, then on, from
/// the same dropout generator state: losses, gradients and the generator's state after
/// must be equal bit for bit. Returns the activation bytes (off, on).
pub fn checkpointing_is_exact<M: CausalLm<f32>>(m: &mut M, batch: &Batch<'_>) -> (usize, usize) {
    let start = m.state().rng.state();
    let run = |m: &mut M, on: bool| {
        m.state_mut().checkpointing = on;
        m.state_mut().rng.set_state(start);
        m.state_mut().zero_grad();
        let losses: Vec<f64> = (0..2).map(|_| m.forward_backward(batch, None).unwrap().loss_sum).collect();
        (losses, m.state_mut().grads_mut().clone(), m.state().rng.state(), m.activation_bytes())
    };
    let (loss, grads, rng, bytes) = run(m, false);
    let (ck_loss, ck_grads, ck_rng, ck_bytes) = run(m, true);
    assert_eq!(loss, ck_loss);
    assert!(grads == ck_grads, "gradients differ with checkpointing");
    assert!(grads.iter().any(|&x| x != 0.0));
    assert_eq!(rng, ck_rng);
    (bytes, ck_bytes)
}

/// Batches of changing shapes (B, T) through one model, whose activations reuse the
/// buffers of the previous shape, give bit for bit the losses, gradients and logits of a
/// fresh model (same weights) given only that batch; a smaller shape keeps the buffers.
pub fn recycled_activations_are_exact<M: CausalLm<f32>>(make: impl Fn() -> M) {
    let mut m = make();
    let shapes = [(2usize, 6usize), (1, 3), (3, 5), (2, 6), (1, 1)];
    for (step, &(b, t)) in shapes.iter().enumerate() {
        let ids: Vec<i64> = (0..b * t).map(|i| ((i * 7 + step) % 11) as i64).collect();
        let batch = Batch { ids: &ids, mask: None, labels: None, b, t };
        let mut fresh = make();
        let run = |m: &mut M| {
            m.state_mut().zero_grad();
            let loss = m.forward_backward(&batch, None).unwrap().loss_sum;
            m.forward(&batch).unwrap();
            (loss, m.state_mut().grads_mut().clone(), m.logits().to_vec())
        };
        let (held, got) = (m.activation_bytes(), run(&mut m));
        assert!(got == run(&mut fresh), "step {step}, shape ({b}, {t}): differs from a fresh model");
        if step > 0 && b * t < shapes[step - 1].0 * shapes[step - 1].1 {
            // all float buffers kept (the small index buffers and rotary tables are resized)
            let now = m.activation_bytes();
            assert!(10 * now >= 9 * held, "step {step}: {now} bytes after a smaller shape, {held} before");
        }
    }
}

/// Moves every parameter a little (biases and norms away from their init), so that every
/// path of the backward is exercised.
pub fn perturb<M: CausalLm<f64>>(m: &mut M) {
    let mut r = crate::rng::SplitMix64::new(9);
    for x in m.state_mut().params.iter_mut() {
        *x += 0.1 * (r.next_f64() - 0.5);
    }
}

/// The backward against central differences in f64, for every trainable parameter.
pub fn assert_gradients_match<M: CausalLm<f64>>(m: &mut M, batch: &Batch<'_>) {
    let (worst, scale) = gradient_error(m, batch);
    assert!(worst < 1e-7 * scale.max(1.0), "max abs error {worst:e} (grad scale {scale:e})");
}

/// One backward, then central differences in f64 for every trainable parameter:
/// returns (max |analytic - numeric|, max |analytic|).
pub fn gradient_error<M: CausalLm<f64>>(m: &mut M, batch: &Batch<'_>) -> (f64, f64) {
    m.state_mut().zero_grad();
    m.forward_backward(batch, None).unwrap();
    let analytic = m.state_mut().grads_mut().clone();
    let h = 1e-6;
    let mut worst = 0.0f64;
    for slot in m.state().grad_slots() {
        for (k, pi) in slot.params.clone().enumerate() {
            let orig = m.state().params[pi];
            let loss_at = |x: f64, m: &mut M| {
                m.state_mut().params[pi] = x;
                m.forward(batch).unwrap();
                let s = m.loss_stats();
                s.loss_sum / s.count as f64
            };
            let num = (loss_at(orig + h, m) - loss_at(orig - h, m)) / (2.0 * h);
            m.state_mut().params[pi] = orig;
            worst = worst.max((num - analytic[slot.grads.start + k]).abs());
        }
    }
    (worst, analytic.iter().fold(0.0f64, |a, b| a.max(b.abs())))
}
