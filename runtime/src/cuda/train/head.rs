//! The head: final norm, classifier and cross-entropy (one row chunk of logits at a time, the
//! loss kernel turning each chunk into its gradient in place, the classifier's backward right
//! after it), the final norm's backward, and the embedding's backward.

use super::super::error::Result;
use super::super::gemm::RowMajorGemm;
use super::super::gpu::{DevPtr, Dtype};
use super::Step;
use super::config::NormCfg;

impl Step<'_> {
    /// Final norm, loss and the head's backward; returns the buffer holding d(last layer output).
    /// With `capture`, appends the logits `[n, vocab]` (after the final softcap) to it.
    pub(super) fn head(&self, mut capture: Option<&mut Vec<f32>>) -> Result<DevPtr> {
        let (k, dt, es, n, c) = (self.k, self.dt, self.es, self.s.n, self.s.c);
        let bf = self.buf;
        let spec = self.spec;
        let fnorm = NormCfg::new(
            &spec
                .final_norm
                .unwrap_or(spec.layers[spec.layers.len() - 1].block.norm),
        );
        let top = bf.layers.len() - 1;
        if self.folds_into_next(top) {
            // The last layer's down projection wrote the stream itself (`fold`).
            let x = bf.resid_final;
            self.norm_fwd(&fnorm, bf.lnf, 0, bf.rstdf, bf.meanf, x, 0, "final_norm")?;
        } else {
            let last = bf.layers[top].resid_mid;
            self.norm_fwd(
                &fnorm,
                bf.lnf,
                bf.resid_final,
                bf.rstdf,
                bf.meanf,
                last,
                bf.tmp,
                "final_norm",
            )?;
        }
        let (head, dhead) = if spec.embedding.tied {
            (self.p.w("embed.weight")?, self.p.g("embed.weight"))
        } else {
            (self.p.w("lm_head.weight")?, self.p.g("lm_head.weight"))
        };
        let head_bias = self.p.wo("lm_head.bias");
        let (vocab, vp, ld) = (spec.vocab as usize, self.s.vp, self.s.ld);
        let dscale = 1.0 / self.valid_targets as f32;
        let softcap = spec.logits.softcap.unwrap_or(0.0) as f32;
        let mut r0 = 0;
        while r0 < n {
            let rows = self.s.chunk.min(n - r0);
            let x = bf.lnf + (r0 * c) as u64 * es;
            // Rows of `ld` (aligned) hold the `vp` logits.
            let g = RowMajorGemm {
                ldc: ld,
                ..RowMajorGemm::linear(rows, vp, c)
            };
            // The chunk before's weight gradient may still read the logits on the branch.
            self.claim(bf.logits)?;
            // SAFETY: x, head and the logits chunk are views into this trainer's arenas, sized
            // at construction for `rows <= chunk` rows of `c` and `ld`.
            unsafe { self.gemm.linear_as(dt, &g, x, head, head_bias, bf.logits) }?;
            if let Some(out) = capture.as_deref_mut() {
                self.capture_logits(out, rows, vocab, softcap)?;
            }
            // The softmax spans the padded vocabulary, as the CPU executor's and the exported
            // HF model's (whose `vocab_size` is the padded one) do: pad columns are logits like
            // any other, and their rows of the head learn to stay below the real ones.
            k.xent(
                dt,
                bf.logits,
                self.loss_rows.at(r0),
                self.targets + (r0 * 4) as u64,
                rows,
                vp,
                ld,
                softcap,
                Some(dscale),
            )?;
            // The weight gradient first: on the branch it then runs beside the input gradient.
            // The first chunk writes the head's gradient (nothing earlier in the step does: a
            // tied embedding's backward adds to it at the end), so its GEMM overwrites (beta 0)
            // and may be timed for its algorithm (`Gemm::with_tuning`); later chunks add.
            let beta = if r0 == 0 { 0.0 } else { 1.0 };
            self.wgrad(None, [bf.logits, x], || {
                self.mm_grad(vp, c, rows, bf.logits, ld, x, c, dhead, beta)?;
                if head_bias != 0 {
                    let db = self.p.g("lm_head.bias");
                    k.colsum(dt, db, bf.logits, rows, vp, ld, self.reduce_scratch())?;
                }
                Ok(())
            })?;
            self.mm(
                rows,
                c,
                vp,
                bf.logits,
                ld,
                head,
                c,
                bf.dlnf + (r0 * c) as u64 * es,
                c,
                0.0,
            )?;
            r0 += rows;
        }
        let g = bf.g_a;
        self.norm_bwd(
            &fnorm,
            g,
            bf.dlnf,
            bf.resid_final,
            bf.rstdf,
            bf.meanf,
            0,
            "final_norm",
        )?;
        Ok(g)
    }

    /// Downloads the logits chunk (`rows` rows) and appends its `vocab` valid columns as f32.
    /// The kernels keep the logits before the final softcap (the loss kernel applies it); the
    /// captured logits are the model's output, after it.
    fn capture_logits(
        &self,
        out: &mut Vec<f32>,
        rows: usize,
        vocab: usize,
        softcap: f32,
    ) -> Result<()> {
        let es = self.es as usize;
        let ld = self.s.ld;
        // SAFETY: the logits chunk is `rows * ld` elements of this trainer's arena.
        let raw = unsafe { self.gpu.download_raw(self.buf.logits, rows * ld * es) }?;
        let cap = |x: f32| {
            if softcap > 0.0 {
                softcap * (x / softcap).tanh()
            } else {
                x
            }
        };
        for row in raw.chunks(ld * es) {
            out.extend(
                row[..vocab * es]
                    .chunks(es)
                    .map(|b| match self.dt {
                        Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                        Dtype::Bf16 => {
                            f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
                        }
                    })
                    .map(cap),
            );
        }
        Ok(())
    }

    /// The embedding's backward from `g` = d(layer 0 input), in the batch's fixed order
    /// ([`crate::ops::embedding::scatter_plan`]), its partial sums in `dq_acc` (free by now).
    pub(super) fn embed_bwd(&self, g: DevPtr) -> Result<()> {
        self.k.embed_bwd(
            self.dt,
            self.p.g("embed.weight"),
            self.p.g("pos_embed.weight"),
            self.tokens,
            self.scatter,
            self.buf.dq_acc,
            g,
            self.s.n,
            self.s.seq,
            self.s.c,
            self.spec.embedding.scale as f32,
        )
    }
}
