//! Global-norm gradient clipping, as `torch.nn.utils.clip_grad_norm_` does it: one L2 norm over
//! every gradient together, and one scale for all of them when it exceeds the limit.

/// The L2 norm of all gradients together. Squares are summed in f64, tensor by tensor in the given
/// order and element by element in index order, so the result does not depend on threads.
pub fn global_norm<'a>(grads: impl IntoIterator<Item = &'a [f32]>) -> f64 {
    let mut sum = 0.0f64;
    for g in grads {
        for &x in g {
            sum += (x as f64) * (x as f64);
        }
    }
    sum.sqrt()
}

/// The factor that brings a gradient of norm `norm` down to `max_norm`: `max_norm / (norm + 1e-6)`
/// when that is below 1, else exactly 1 (gradients under the limit are left bit-identical).
pub fn clip_factor(norm: f64, max_norm: f64) -> f32 {
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 { factor as f32 } else { 1.0 }
}

/// Scales every gradient so that their global norm is at most `max_norm`; returns the norm before
/// clipping (non-finite when a gradient is).
pub fn clip_global_norm<'a>(grads: impl IntoIterator<Item = &'a mut [f32]>, max_norm: f64) -> f64 {
    let mut grads: Vec<&'a mut [f32]> = grads.into_iter().collect();
    let norm = global_norm(grads.iter().map(|g| &**g));
    let factor = clip_factor(norm, max_norm);
    if factor != 1.0 && norm.is_finite() {
        for g in &mut grads {
            for x in g.iter_mut() {
                *x *= factor;
            }
        }
    }
    norm
}

/// The trainers' clipping: with `max_norm > 0`, [`clip_global_norm`] over every tensor of `grads`
/// in name order; otherwise only their [`global_norm`]. Returns the norm before clipping.
pub fn clip_params(grads: &mut crate::Params, max_norm: f64) -> f64 {
    if max_norm > 0.0 {
        clip_global_norm(grads.tensors.values_mut().map(|t| t.data_mut()), max_norm)
    } else {
        global_norm(grads.tensors.values().map(|t| t.data()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_spans_all_tensors() {
        let (a, b) = (vec![3.0f32, 0.0], vec![0.0f32, 4.0, 0.0]);
        assert_eq!(global_norm([a.as_slice(), b.as_slice()]), 5.0);
    }

    #[test]
    fn clipping_scales_to_the_limit() {
        let (mut a, mut b) = (vec![3.0f32, 0.0], vec![0.0f32, 4.0]);
        let norm = clip_global_norm([a.as_mut_slice(), b.as_mut_slice()], 1.0);
        assert_eq!(norm, 5.0);
        let after = global_norm([a.as_slice(), b.as_slice()]);
        assert!((after - 1.0).abs() < 1e-6, "{after}");
        assert!((a[0] / b[1] - 0.75).abs() < 1e-6, "direction kept");
    }

    #[test]
    fn gradients_under_the_limit_are_untouched() {
        let mut a = vec![0.3f32, -0.4];
        let norm = clip_global_norm([a.as_mut_slice()], 1.0);
        assert!((norm - 0.5).abs() < 1e-7);
        assert_eq!(a, vec![0.3, -0.4]);
    }

    #[test]
    fn non_finite_norm_is_reported_not_spread() {
        let mut a = vec![f32::NAN, 1.0];
        let norm = clip_global_norm([a.as_mut_slice()], 1.0);
        assert!(!norm.is_finite());
        assert_eq!(a[1], 1.0);
    }
}
