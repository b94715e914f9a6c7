//! Text generation through the GPU decoder: the host sampler of [`crate::train::sample`] (the
//! same temperature, top-k, stop ids, seed and window as the CPU's `generate_cached`) fed with
//! logits from [`GpuDecoder::decode`], so that a GPU run picks what the CPU picks wherever the
//! logits agree.

use super::GpuDecoder;
use crate::train::TrainError;
use crate::train::sample::{SampleOptions, generate_in_context};

impl GpuDecoder {
    /// `prompt` extended by up to `tokens` ids among the first `vocab`, stopping after an id of
    /// `stop`; `on_id` sees the ids so far after each new one. As the CPU's
    /// [`crate::train::sample::generate_cached`]: the window is the spec's context (none for
    /// dynamic-NTK RoPE); while it fits, each step runs only the new id, past it the window
    /// slides and every step starts over. Needs a decoder of batch 1.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &mut self,
        prompt: &[u32],
        (tokens, vocab): (usize, usize),
        options: SampleOptions,
        stop: &[u32],
        seed: u64,
        on_id: impl FnMut(&[u32]),
    ) -> Result<Vec<u32>, TrainError> {
        generate_in_context(
            self.spec.max_sequence(),
            prompt,
            (tokens, vocab),
            options,
            stop,
            seed,
            |w| self.decode(w),
            on_id,
        )
    }
}
