//! Incremental decoding on the CPU: a key/value cache per layer.
//!
//! One [`Executor::decode`] call takes the whole window of ids to condition on and returns the
//! logits of its last position. When the cache holds a prefix of the window (`p0` ids), only the
//! `m` new ids run: they are embedded at positions `p0..p0 + m`; in each layer the nodes run on
//! the `m` new rows, RoPE takes rows `p0..p0 + m` of the table for the whole window, and
//! attention reads the cached keys (after qk-norm and RoPE) and values ahead of the new ones;
//! the new keys and values are then appended. The final norm and classifier run on the last row.
//!
//! A layer with latent attention caches what DeepSeek's decoders cache: the normalised key/value
//! latent (`kv_rank` wide) and the rotated shared key (`rope_dim` wide) per position, instead of
//! per-head keys and values (`heads · (nope_dim + rope_dim + v_dim)`); each call expands the
//! cached latent into keys and values through `kv_b` (as transformers does) before attending.
//!
//! The result equals the last row of [`Executor::forward`] over the whole window, up to the order
//! of floating-point sums. The cache starts over (the window runs from its start) when the window
//! does not extend what the cache holds (a new prompt, or a window that slid past the context),
//! or when a RoPE table for the longer window differs on the cached positions (dynamic NTK
//! scaling re-derives its frequencies from the length).

use super::*;

/// Cached keys and values of one layer, read by its attention node.
pub(super) struct Past<'a, T> {
    /// `[p0, kv_dim]`, after qk-norm and RoPE.
    pub keys: &'a [T],
    /// `[p0, kv_dim]`.
    pub values: &'a [T],
}

/// What [`Executor::decode`] keeps between calls for one sequence.
#[derive(Debug, Clone)]
pub struct KvCache<T: Float> {
    /// The ids whose keys and values are cached.
    tokens: Vec<u32>,
    /// Per layer, `[tokens.len(), kv_dim]`; with latent attention, the normalised latent
    /// `[tokens.len(), kv_rank]`.
    keys: Vec<Vec<T>>,
    /// Per layer, `[tokens.len(), kv_dim]`; with latent attention, the rotated shared key
    /// `[tokens.len(), rope_dim]`.
    values: Vec<Vec<T>>,
    /// Per distinct RoPE of the spec, the (cos, sin) rows the cached keys were rotated with.
    rope: Vec<(Vec<T>, Vec<T>)>,
}

impl<T: Float> Default for KvCache<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Float> KvCache<T> {
    /// An empty cache.
    pub fn new() -> Self {
        KvCache {
            tokens: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
            rope: Vec::new(),
        }
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Elements cached per position, summed over the layers (0 when empty).
    pub fn width(&self) -> usize {
        if self.tokens.is_empty() {
            return 0;
        }
        let n = self.tokens.len();
        self.keys
            .iter()
            .zip(&self.values)
            .map(|(k, v)| (k.len() + v.len()) / n)
            .sum()
    }

    /// Forgets everything (call it when the parameters change).
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.keys.clear();
        self.values.clear();
        self.rope.clear();
    }
}

/// Rows `from..to` of `table` as a table of its own (positions renumbered from 0).
fn table_rows<T: Float>(table: &RopeTable<T>, from: usize, to: usize) -> RopeTable<T> {
    let half = table.rotary_dims / 2;
    RopeTable {
        rotary_dims: table.rotary_dims,
        style: table.style,
        seq: to - from,
        cos: table.cos[from * half..to * half].to_vec(),
        sin: table.sin[from * half..to * half].to_vec(),
    }
}

impl Executor {
    /// Logits `[vocab_padded]` of the last position of `window` (one sequence) in evaluation
    /// mode, reusing and extending `cache` (see the module docs). A `cache` must only be used
    /// with one set of parameters: [`KvCache::clear`] it when they change.
    pub fn decode<T: Float>(
        &self,
        params: &dyn ParamSource<T>,
        cache: &mut KvCache<T>,
        window: &[u32],
    ) -> Result<Vec<T>> {
        self.shape(window, 1)?;
        params.check_params(&self.spec)?;
        let layers = &self.spec.layers;
        let len = window.len();
        // One table for the whole window per distinct RoPE of the spec (most have one; Gemma-3's
        // local and global layers two), and which one each layer uses.
        let mut ropes: Vec<(&modelspec_dsl::ir::Rope, RopeTable<T>)> = Vec::new();
        let mut rope_of = Vec::with_capacity(layers.len());
        for l in layers {
            rope_of.push(match &l.position {
                Position::Rope(r) => Some(match ropes.iter().position(|(seen, _)| *seen == r) {
                    Some(j) => j,
                    None => {
                        ropes.push((r, RopeTable::new(r, len)));
                        ropes.len() - 1
                    }
                }),
                _ => None,
            });
        }
        let reusable = cache.keys.len() == layers.len()
            && cache.tokens.len() < len
            && window.starts_with(&cache.tokens)
            && cache.rope.len() == ropes.len()
            && cache.rope.iter().zip(&ropes).all(|((cos, sin), (_, t))| {
                t.cos[..cos.len()] == cos[..] && t.sin[..sin.len()] == sin[..]
            });
        if !reusable {
            cache.clear();
            cache.keys = vec![Vec::new(); layers.len()];
            cache.values = vec![Vec::new(); layers.len()];
        }
        let p0 = cache.tokens.len();
        let new = &window[p0..];
        let (m, d) = (new.len(), self.spec.d_model as usize);
        let shape = Shape {
            batch: 1,
            seq: m,
            rows: m,
            d,
        };
        let mut x = vec![T::ZERO; m * d];
        let pos = self
            .spec
            .embedding
            .learned_positions
            .then(|| &p(params, "pos_embed.weight")[p0 * d..]);
        embedding::forward(
            new,
            p(params, "embed.weight"),
            d,
            self.spec.embedding.scale,
            pos,
            m,
            &mut x,
        );
        for (i, rope) in rope_of.iter().enumerate() {
            let mut ctx = self.layer_ctx(i, params, shape, false);
            ctx.rope = rope.map(|j| table_rows(&ropes[j].1, p0, len));
            let latent = layers[i].attention.mla.is_some();
            // Latent attention: the cached latents expanded into per-head keys and values.
            let expanded = latent.then(|| {
                let (m, dims) = ctx.mla_dims();
                let kv_w = dims.heads * (dims.nope + dims.v);
                let mut kv = vec![T::ZERO; p0 * kv_w];
                if p0 > 0 {
                    let w = p(params, &format!("layers.{i}.attn.kv_b.weight"));
                    linear::forward(
                        &cache.keys[i],
                        p0,
                        m.kv_rank as usize,
                        w,
                        None,
                        kv_w,
                        &mut kv,
                    );
                }
                (
                    crate::ops::mla::keys(dims, &kv, &cache.values[i]),
                    crate::ops::mla::values(dims, &kv),
                )
            });
            ctx.past = Some(match &expanded {
                Some((keys, values)) => Past { keys, values },
                None => Past {
                    keys: &cache.keys[i],
                    values: &cache.values[i],
                },
            });
            let (out, store) = ctx.forward(x, None, None);
            let (k_new, v_new) = if latent {
                (
                    store.get(Act::KvLatentNorm).to_vec(),
                    store.get(Act::KRope).to_vec(),
                )
            } else {
                (
                    store.get(ctx.lp.k_final).to_vec(),
                    store.get(Act::V).to_vec(),
                )
            };
            drop(ctx);
            cache.keys[i].extend_from_slice(&k_new);
            cache.values[i].extend_from_slice(&v_new);
            x = out;
        }
        cache.tokens = window.to_vec();
        cache.rope = ropes.into_iter().map(|(_, t)| (t.cos, t.sin)).collect();
        let last = Shape {
            batch: 1,
            seq: 1,
            rows: 1,
            d,
        };
        let (_, logits) = self.head(params, &x[(m - 1) * d..], last);
        Ok(logits)
    }
}
