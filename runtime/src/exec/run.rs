//! The executor's per-layer step API ([`Run`]): embed, layer, head and their backward steps, which
//! `forward`, `loss_and_grads` and generated models all call.

use super::*;

impl Executor {
    /// Starts a [`Run`] of `tokens` (`batch` equal sequences, row-major) with `params`: checks the
    /// input and the parameters. [`Executor::forward`] and [`Executor::loss_and_grads`] are loops
    /// over the run's steps; generated code calls the same steps unrolled.
    pub fn run<'a, T: Float>(
        &'a self,
        params: &'a dyn ParamSource<T>,
        tokens: &'a [u32],
        batch: usize,
        mode: Mode,
    ) -> Result<Run<'a, T>> {
        let shape = self.shape(tokens, batch)?;
        params.check_params(&self.spec)?;
        let aux_coef = match mode {
            Mode::Train if self.aux_loss => self.spec.layers.iter().find_map(|l| match &l.ffn {
                Ffn::Moe(m) if m.aux_loss > 0.0 => Some(m.aux_loss),
                _ => None,
            }),
            _ => None,
        };
        let aux = aux_coef.map(|_| {
            let e = self.spec.layers.iter().find_map(|l| match &l.ffn {
                Ffn::Moe(m) => Some(m.experts as usize),
                Ffn::Mlp(_) => None,
            });
            AuxStats::new(e.unwrap_or(0))
        });
        Ok(Run {
            exec: self,
            params,
            tokens,
            shape,
            mode,
            aux_coef,
            aux,
            aux_dprobs: None,
            grads: None,
        })
    }
}

/// What a [`Run`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Logits only: no dropout, no load-balancing loss, nothing saved for backward (the layers'
    /// checkpoint policies are ignored).
    Eval,
    /// Forward then backward: dropout when a seed is set, the load-balancing loss when enabled,
    /// and each layer saves what its checkpoint policy says.
    Train,
}

/// The residual stream between two steps of a [`Run`], or its gradient: `[batch·seq, d_model]`,
/// row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Hidden<T: Float = f32> {
    data: Vec<T>,
}

impl<T: Float> Hidden<T> {
    /// The values, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// The values, moved out.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }
}

/// What [`Run::layer`] leaves for [`Run::layer_backward`]: the layer input and the activations
/// its checkpoint policy saves; backward recomputes the rest. Empty in [`Mode::Eval`].
pub struct Saved<T: Float = f32> {
    layer: usize,
    store: Option<Store<T>>,
}

impl<T: Float> Saved<T> {
    /// The layer it belongs to.
    pub fn layer(&self) -> usize {
        self.layer
    }

    /// The names of the activations held, in declaration order (empty in [`Mode::Eval`]).
    pub fn names(&self) -> Vec<&'static str> {
        self.store.as_ref().map_or_else(Vec::new, |store| {
            Act::ALL
                .iter()
                .filter(|a| store.acts[**a as usize].is_some())
                .map(|a| a.name())
                .collect()
        })
    }
}

impl<T: Float> std::fmt::Debug for Saved<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saved")
            .field("layer", &self.layer)
            .field("names", &self.names())
            .finish()
    }
}

/// The losses of a training [`Run`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Losses {
    /// The training objective: `ce_loss + aux coefficient · aux_loss`.
    pub loss: f64,
    /// Mean next-token cross-entropy.
    pub ce_loss: f64,
    /// The MoE load-balancing loss before its coefficient (0 without MoE).
    pub aux_loss: f64,
}

/// What [`Run::head`] returns: the logits, the losses (training), and what
/// [`Run::head_backward`] reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Head<T: Float = f32> {
    /// The last layer's output (kept for the final norm's backward; empty in eval).
    hidden: Vec<T>,
    /// The final-normed hidden state (the classifier's input; empty in eval).
    normed: Vec<T>,
    logits: Vec<T>,
    losses: Option<Losses>,
}

impl<T: Float> Head<T> {
    /// Logits `[batch, seq, vocab_padded]`, row-major.
    pub fn logits(&self) -> &[T] {
        &self.logits
    }

    /// The logits, moved out.
    pub fn into_logits(self) -> Vec<T> {
        self.logits
    }

    /// The losses ([`Mode::Train`] only).
    pub fn losses(&self) -> Option<Losses> {
        self.losses
    }
}

/// One pass over a batch, step by step: [`Run::embed`], [`Run::layer`] for each layer in order,
/// [`Run::head`]; for training then [`Run::head_backward`], [`Run::layer_backward`] for each
/// layer in reverse, [`Run::embed_backward`] and [`Run::finish`]. Made by [`Executor::run`].
///
/// The executor's `forward` and `loss_and_grads` are exactly these calls in a loop, and generated
/// models make the same calls in straight-line code, so both give bit-identical results. Each
/// layer's checkpoint policy is an argument of its step; recomputation is bit-exact, so the
/// policy changes memory, never the numbers.
///
/// ```
/// use modelspec_dsl::ir::LayerCheckpoint;
/// use modelspec_runtime::{exec::{Executor, Mode}, Params};
/// # fn demo(spec: &modelspec_dsl::ModelSpec) -> Result<(), modelspec_runtime::Error> {
/// let params = Params::<f32>::init(spec, 0);
/// let exec = Executor::new(spec)?;
/// let tokens = [1, 2, 3, 4];
/// let mut run = exec.run(&params, &tokens, 1, Mode::Train)?;
/// let mut x = run.embed();
/// let mut saved = Vec::new();
/// for i in 0..spec.layers.len() {
///     let (y, s) = run.layer(i, x, &LayerCheckpoint::Full)?;
///     saved.push(s);
///     x = y;
/// }
/// let head = run.head(x)?;
/// let mut dx = run.head_backward(&head)?;
/// for (i, s) in saved.into_iter().enumerate().rev() {
///     dx = run.layer_backward(i, s, dx)?;
/// }
/// run.embed_backward(dx)?;
/// let step = run.finish(head)?;
/// # Ok(()) }
/// ```
pub struct Run<'a, T: Float = f32> {
    exec: &'a Executor,
    params: &'a dyn ParamSource<T>,
    tokens: &'a [u32],
    shape: Shape,
    mode: Mode,
    /// The load-balancing coefficient when the loss includes it.
    aux_coef: Option<f64>,
    /// Routing statistics of the MoE layers seen so far (with `aux_coef`).
    aux: Option<AuxStats>,
    /// d aux loss / d router probabilities, set by `head`.
    aux_dprobs: Option<Vec<T>>,
    /// Parameter gradients, from `head_backward` on.
    grads: Option<Grads<T>>,
}

impl<T: Float> std::fmt::Debug for Run<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("model", &self.exec.spec.name)
            .field("batch", &self.shape.batch)
            .field("seq", &self.shape.seq)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<'a, T: Float> Run<'a, T> {
    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.shape.batch
    }

    /// Tokens per sequence.
    pub fn seq(&self) -> usize {
        self.shape.seq
    }

    /// The per-layer policies `policy` resolves to for this run's batch and sequence length
    /// ([`Executor::layer_policies`]): with [`Policy::FromSpec`] and a global budget, the
    /// planner's save sets.
    pub fn layer_policies(&self, policy: &Policy) -> Result<Vec<LayerCheckpoint>> {
        self.exec
            .layer_policies(policy, self.shape.batch, self.shape.seq)
    }

    fn misuse(what: String) -> Error {
        Error::Run(what)
    }

    fn check_hidden(&self, x: &Hidden<T>, step: &str) -> Result<()> {
        let want = self.shape.rows * self.shape.d;
        if x.data.len() == want {
            Ok(())
        } else {
            Err(Self::misuse(format!(
                "`{step}` got {} values, expected {want} ([{}, {}])",
                x.data.len(),
                self.shape.rows,
                self.shape.d
            )))
        }
    }

    fn check_layer(&self, i: usize, step: &str) -> Result<()> {
        let n = self.exec.program.layers.len();
        if i < n {
            Ok(())
        } else {
            Err(Self::misuse(format!(
                "`{step}` of layer {i}; the model has {n} layers"
            )))
        }
    }

    /// The token (and learned position) embedding, with embedding dropout when training.
    pub fn embed(&self) -> Hidden<T> {
        let training = self.mode == Mode::Train;
        Hidden {
            data: self
                .exec
                .embed(self.params, self.tokens, self.shape, training),
        }
    }

    /// Layer `i` forward from its input `x` under `policy`: the layer output, and what backward
    /// needs (the activations `policy` saves; in [`Mode::Eval`] nothing).
    pub fn layer(
        &mut self,
        i: usize,
        x: Hidden<T>,
        policy: &LayerCheckpoint,
    ) -> Result<(Hidden<T>, Saved<T>)> {
        self.check_layer(i, "layer")?;
        self.check_hidden(&x, "layer")?;
        let exec = self.exec;
        let training = self.mode == Mode::Train;
        let keep = if training {
            exec.program.layers[i].save_set(policy)?
        } else {
            [false; N_ACTS]
        };
        let ctx = exec.layer_ctx(i, self.params, self.shape, training);
        let aux = match (&exec.spec.layers[i].ffn, self.aux.as_mut()) {
            (Ffn::Moe(m), Some(a)) if m.aux_loss > 0.0 => Some(a),
            _ => None,
        };
        let (out, store) = ctx.forward(x.data, Some(&keep), aux);
        Ok((
            Hidden { data: out },
            Saved {
                layer: i,
                store: training.then_some(store),
            },
        ))
    }

    /// The final norm and the classifier (with the logit softcap); when training, also the
    /// losses.
    pub fn head(&mut self, x: Hidden<T>) -> Result<Head<T>> {
        self.check_hidden(&x, "head")?;
        let (normed, logits) = self.exec.head(self.params, &x.data, self.shape);
        if self.mode == Mode::Eval {
            return Ok(Head {
                hidden: Vec::new(),
                normed: Vec::new(),
                logits,
                losses: None,
            });
        }
        let vp = self.exec.spec.vocab_padded as usize;
        let ce_loss = cross_entropy::forward(&logits, vp, self.tokens, self.shape.seq);
        let aux_loss = self.aux.as_ref().map_or(0.0, |a| a.loss());
        let loss = ce_loss + self.aux_coef.unwrap_or(0.0) * aux_loss;
        self.aux_dprobs = self
            .aux
            .as_ref()
            .zip(self.aux_coef)
            .map(|(a, c)| a.dprobs(c));
        Ok(Head {
            hidden: x.data,
            normed,
            logits,
            losses: Some(Losses {
                loss,
                ce_loss,
                aux_loss,
            }),
        })
    }

    /// Logits `[batch, seq, vocab_padded]` of `head` as a tensor.
    pub fn logits(&self, head: Head<T>) -> Result<Tensor<T>> {
        let vp = self.exec.spec.vocab_padded as usize;
        Tensor::from_vec(&[self.shape.batch, self.shape.seq, vp], head.logits)
    }

    /// Backward through the loss, the logit softcap, the classifier and the final norm: d loss /
    /// d last layer output. Starts the parameter gradients.
    pub fn head_backward(&mut self, head: &Head<T>) -> Result<Hidden<T>> {
        if head.losses.is_none() {
            return Err(Self::misuse(
                "`head_backward` needs a `head` of a training run".into(),
            ));
        }
        let exec = self.exec;
        let spec = &exec.spec;
        let params = self.params;
        let Shape { rows, d, seq, .. } = self.shape;
        let vp = spec.vocab_padded as usize;
        let grads = self.grads.insert(Grads {
            params: Params::zeros(spec),
        });
        let logits = &head.logits;
        let mut dlogits = vec![T::ZERO; logits.len()];
        cross_entropy::backward(logits, vp, self.tokens, seq, 1.0, &mut dlogits);
        if let Some(cap) = spec.logits.softcap {
            softcap::backward_inplace(logits, &mut dlogits, cap);
        }
        let mut d_normed = vec![T::ZERO; rows * d];
        let head_name = if spec.embedding.tied {
            "embed"
        } else {
            "lm_head"
        };
        {
            let wn = format!("{head_name}.weight");
            let mut dw = grads.take(&wn);
            let mut db = grads.take_opt("lm_head.bias", spec.logits.bias);
            linear::backward(
                &head.normed,
                &dlogits,
                rows,
                d,
                vp,
                p(params, &wn),
                Some(&mut d_normed),
                &mut dw,
                db.as_deref_mut(),
            );
            grads.put(&wn, dw);
            grads.put_opt("lm_head.bias", db);
        }
        drop(dlogits);
        let dh = match &spec.final_norm {
            Some(n) => {
                let mut g = vec![T::ZERO; rows * d];
                grads.norm(params, "final_norm", n, d, &head.hidden, &d_normed, &mut g);
                g
            }
            None => d_normed,
        };
        Ok(Hidden { data: dh })
    }

    /// Backward through layer `i` from d loss / d its output: d loss / d its input, accumulating
    /// its parameters' gradients. Recomputes, from what `saved` holds, every activation its
    /// policy dropped.
    pub fn layer_backward(
        &mut self,
        i: usize,
        saved: Saved<T>,
        dy: Hidden<T>,
    ) -> Result<Hidden<T>> {
        self.check_layer(i, "layer_backward")?;
        self.check_hidden(&dy, "layer_backward")?;
        if saved.layer != i {
            return Err(Self::misuse(format!(
                "`layer_backward` of layer {i} got the saved state of layer {}",
                saved.layer
            )));
        }
        let Some(mut store) = saved.store else {
            return Err(Self::misuse(format!(
                "`layer_backward` of layer {i}: its forward ran in eval mode"
            )));
        };
        let exec = self.exec;
        let Some(grads) = self.grads.as_mut() else {
            return Err(Self::misuse(format!(
                "`layer_backward` of layer {i} before `head_backward`"
            )));
        };
        let ctx = exec.layer_ctx(i, self.params, self.shape, true);
        let aux = match &exec.spec.layers[i].ffn {
            Ffn::Moe(m) if m.aux_loss > 0.0 => self.aux_dprobs.as_deref(),
            _ => None,
        };
        Ok(Hidden {
            data: ctx.backward(&mut store, &dy.data, grads, aux),
        })
    }

    /// Backward through the embedding dropout and the token (and position) embedding.
    pub fn embed_backward(&mut self, dy: Hidden<T>) -> Result<()> {
        self.check_hidden(&dy, "embed_backward")?;
        let exec = self.exec;
        let spec = &exec.spec;
        let Some(grads) = self.grads.as_mut() else {
            return Err(Self::misuse(
                "`embed_backward` before `head_backward`".into(),
            ));
        };
        let mut d_embed = dy.data;
        if let Some(drop) = exec.embed_dropout(true) {
            let mut g = vec![T::ZERO; d_embed.len()];
            drop.backward_acc(&d_embed, &mut g);
            d_embed = g;
        }
        let mut dtable = grads.take("embed.weight");
        let mut dpos = grads.take_opt("pos_embed.weight", spec.embedding.learned_positions);
        embedding::backward(
            self.tokens,
            &d_embed,
            self.shape.d,
            spec.embedding.scale,
            self.shape.seq,
            &mut dtable,
            dpos.as_deref_mut(),
        );
        grads.put("embed.weight", dtable);
        grads.put_opt("pos_embed.weight", dpos);
        Ok(())
    }

    /// The losses, the logits and every parameter's gradient, after the backward steps.
    pub fn finish(self, head: Head<T>) -> Result<StepOutput<T>> {
        let (Some(losses), Some(grads)) = (head.losses, self.grads) else {
            return Err(Self::misuse(
                "`finish` needs a training run through `head_backward`".into(),
            ));
        };
        let vp = self.exec.spec.vocab_padded as usize;
        Ok(StepOutput {
            loss: losses.loss,
            ce_loss: losses.ce_loss,
            aux_loss: losses.aux_loss,
            logits: Tensor::from_vec(&[self.shape.batch, self.shape.seq, vp], head.logits)?,
            grads: grads.params,
        })
    }
}
