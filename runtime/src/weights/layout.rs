//! How one checkpoint tensor is assembled from canonical tensors, and back.
//!
//! Every checkpoint tensor is described the same way: take row blocks of canonical tensors (each
//! canonical tensor viewed as `[rows, cols]`, a vector as `[n, 1]`), stack them in order into a
//! `[total_rows, cols]` matrix, optionally transpose it (GPT-2's Conv1D `[in, out]`), and read the
//! result with the checkpoint's shape. This one description covers plain tensors, fused
//! `[q; k; v]`, GPT-NeoX/Falcon per-head interleaving, fused `gate_up_proj` and stacked experts, and
//! it is inverted exactly by [`split`], so fuse-then-split is the identity by construction.

use std::collections::BTreeMap;

use super::HostTensor;
use crate::Params;

/// A contiguous block of rows of one canonical tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Canonical parameter name.
    pub canonical: String,
    /// First row taken.
    pub row_start: usize,
    /// Number of rows taken.
    pub rows: usize,
}

/// One tensor as the checkpoint stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointTensor {
    /// The name in the checkpoint (HF name).
    pub name: String,
    /// The shape in the checkpoint.
    pub shape: Vec<usize>,
    /// Row blocks of canonical tensors, concatenated in order.
    pub pieces: Vec<Piece>,
    /// The concatenated `[rows, cols]` matrix is stored transposed (`[cols, rows]`), block by
    /// block when `blocks > 1`.
    pub transpose: bool,
    /// The pieces form this many equal blocks, one after the other (one per expert of a stacked
    /// expert tensor): `transpose` and `interleave` apply within each block. 1 for a plain tensor.
    pub blocks: usize,
    /// Within each block the pieces' rows alternate (row 0 of each piece, then row 1 of each...),
    /// as GPT-OSS's gate/up columns do, instead of following one another. The pieces of a block
    /// then have equal rows.
    pub interleave: bool,
}

impl CheckpointTensor {
    /// Canonical names this tensor holds (each once, in first-use order).
    pub fn canonicals(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.pieces {
            if !out.contains(&p.canonical.as_str()) {
                out.push(&p.canonical);
            }
        }
        out
    }
}

/// `[rows, cols]` view of a shape: the first axis against the product of the rest.
pub(crate) fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape.split_first() {
        None => (1, 1),
        Some((&rows, rest)) => (rows, rest.iter().product()),
    }
}

/// Columns shared by every piece of `ct`, given the canonical shapes.
pub(crate) fn piece_cols(ct: &CheckpointTensor, shapes: &BTreeMap<String, Vec<usize>>) -> usize {
    ct.pieces
        .first()
        .and_then(|p| shapes.get(&p.canonical))
        .map(|s| rows_cols(s).1)
        .unwrap_or(1)
}

/// Read access to named f32 tensors: a canonical map ([`HostTensor`]s or the runtime's
/// [`Params`]) that checkpoint tensors are fused from.
pub trait TensorSource {
    /// Shape and row-major data of tensor `name`.
    fn lookup(&self, name: &str) -> Option<(&[usize], &[f32])>;
}

impl TensorSource for BTreeMap<String, HostTensor> {
    fn lookup(&self, name: &str) -> Option<(&[usize], &[f32])> {
        self.get(name)
            .map(|t| (t.shape.as_slice(), t.data.as_slice()))
    }
}

impl TensorSource for Params {
    fn lookup(&self, name: &str) -> Option<(&[usize], &[f32])> {
        self.get(name).map(|t| (t.shape(), t.data()))
    }
}

/// Assembles the checkpoint tensor `ct` from canonical tensors.
///
/// Returns `None` if a canonical tensor is absent or too small (callers validate shapes first).
pub fn fuse(ct: &CheckpointTensor, params: &impl TensorSource) -> Option<HostTensor> {
    let (first_shape, _) = params.lookup(&ct.pieces.first()?.canonical)?;
    let cols = rows_cols(first_shape).1;
    let total_rows: usize = ct.pieces.iter().map(|p| p.rows).sum();
    let mut stacked = Vec::with_capacity(total_rows * cols);
    for piece in &ct.pieces {
        let (shape, data) = params.lookup(&piece.canonical)?;
        if rows_cols(shape).1 != cols {
            return None;
        }
        let start = piece.row_start * cols;
        let end = start + piece.rows * cols;
        stacked.extend_from_slice(data.get(start..end)?);
    }
    let data = arrange(ct, &stacked, total_rows, cols);
    if data.len() != ct.shape.iter().product::<usize>() {
        return None;
    }
    Some(HostTensor {
        shape: ct.shape.clone(),
        data,
    })
}

/// Splits the checkpoint tensor `ct` (data `stored`, already shape-checked) into its canonical
/// pieces, writing rows into `out` (canonical tensors are created zeroed with `shapes` on first use).
pub fn split(
    ct: &CheckpointTensor,
    stored: &[f32],
    shapes: &BTreeMap<String, Vec<usize>>,
    out: &mut BTreeMap<String, HostTensor>,
) {
    let cols = piece_cols(ct, shapes);
    let total_rows: usize = ct.pieces.iter().map(|p| p.rows).sum();
    let untransposed;
    let rows_major: &[f32] = if ct.transpose || ct.interleave {
        untransposed = unarrange(ct, stored, total_rows, cols);
        &untransposed
    } else {
        stored
    };
    let mut at = 0;
    for piece in &ct.pieces {
        let n = piece.rows * cols;
        let shape = shapes
            .get(&piece.canonical)
            .cloned()
            .unwrap_or_else(|| vec![piece.rows, cols]);
        let dst = out
            .entry(piece.canonical.clone())
            .or_insert_with(|| HostTensor {
                data: vec![0.0; shape.iter().product()],
                shape,
            });
        let start = piece.row_start * cols;
        dst.data[start..start + n].copy_from_slice(&rows_major[at..at + n]);
        at += n;
    }
}

/// The order of the stacked rows within one block of `ct` after interleaving: position `i` of
/// the stored block holds stacked row `order[i]` (the identity without `interleave`).
fn block_order(ct: &CheckpointTensor, block_rows: usize) -> Vec<usize> {
    let blocks = ct.blocks.max(1);
    let per_block = ct.pieces.len() / blocks;
    if !ct.interleave || per_block == 0 {
        return (0..block_rows).collect();
    }
    let rows = block_rows / per_block;
    (0..block_rows)
        .map(|i| (i % per_block) * rows + i / per_block)
        .collect()
}

/// The stored layout of the stacked `[total_rows, cols]` rows: per block, interleaved and/or
/// transposed.
fn arrange(ct: &CheckpointTensor, stacked: &[f32], total_rows: usize, cols: usize) -> Vec<f32> {
    if !ct.transpose && !ct.interleave {
        return stacked.to_vec();
    }
    let blocks = ct.blocks.max(1);
    let block_rows = total_rows / blocks;
    let order = block_order(ct, block_rows);
    let mut out = Vec::with_capacity(stacked.len());
    for b in stacked.chunks_exact((block_rows * cols).max(1)) {
        let mut block = Vec::with_capacity(b.len());
        for &r in &order {
            block.extend_from_slice(&b[r * cols..(r + 1) * cols]);
        }
        if ct.transpose {
            block = transpose(&block, block_rows, cols);
        }
        out.extend(block);
    }
    out
}

/// The inverse of [`arrange`]: the stacked rows from the stored tensor.
fn unarrange(ct: &CheckpointTensor, stored: &[f32], total_rows: usize, cols: usize) -> Vec<f32> {
    let blocks = ct.blocks.max(1);
    let block_rows = total_rows / blocks;
    let order = block_order(ct, block_rows);
    let mut out = vec![0.0; stored.len()];
    for (b, dst) in stored
        .chunks_exact((block_rows * cols).max(1))
        .zip(out.chunks_exact_mut((block_rows * cols).max(1)))
    {
        // Stored as [cols, rows] when transposed; transposing back gives [rows, cols].
        let block = if ct.transpose {
            transpose(b, cols, block_rows)
        } else {
            b.to_vec()
        };
        for (i, &r) in order.iter().enumerate() {
            dst[r * cols..(r + 1) * cols].copy_from_slice(&block[i * cols..(i + 1) * cols]);
        }
    }
    out
}

/// Transposes a row-major `[rows, cols]` matrix.
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(shape: &[usize], offset: f32) -> HostTensor {
        let n = shape.iter().product();
        HostTensor {
            shape: shape.to_vec(),
            data: (0..n).map(|i| offset + i as f32).collect(),
        }
    }

    /// `whole` built by `ct` from `canon` splits back into exactly `canon`.
    fn assert_splits_back(
        ct: &CheckpointTensor,
        whole: &HostTensor,
        canon: &BTreeMap<String, HostTensor>,
    ) {
        let shapes: BTreeMap<String, Vec<usize>> = canon
            .iter()
            .map(|(k, v)| (k.clone(), v.shape.clone()))
            .collect();
        let mut back = BTreeMap::new();
        split(ct, &whole.data, &shapes, &mut back);
        assert_eq!(&back, canon);
    }

    /// GPT-OSS's `gate_up_proj`: two experts, each `[gate (3 rows); up (3 rows)]` of width 2,
    /// interleaved row by row and transposed per expert to `[2, 6]`.
    #[test]
    fn interleaved_transposed_blocks_fuse_as_gpt_oss_stores_them_and_split_back() {
        let mut canon = BTreeMap::new();
        let mut pieces = Vec::new();
        for e in 0..2 {
            for (k, part) in ["gate", "up"].iter().enumerate() {
                let name = format!("e{e}.{part}");
                canon.insert(name.clone(), host(&[3, 2], (100 * e + 10 * k) as f32));
                pieces.push(Piece {
                    canonical: name,
                    row_start: 0,
                    rows: 3,
                });
            }
        }
        let ct = CheckpointTensor {
            name: "gate_up_proj".into(),
            shape: vec![2, 2, 6],
            pieces,
            transpose: true,
            blocks: 2,
            interleave: true,
        };
        let fused = fuse(&ct, &canon).expect("fuses");
        // Expert e, input column c, output j: gate row j/2 when j is even, up row j/2 when odd.
        for e in 0..2 {
            for c in 0..2 {
                for j in 0..6 {
                    let part = if j % 2 == 0 { "gate" } else { "up" };
                    let want = canon[&format!("e{e}.{part}")].data[(j / 2) * 2 + c];
                    assert_eq!(fused.data[e * 12 + c * 6 + j], want, "e {e} c {c} j {j}");
                }
            }
        }
        assert_splits_back(&ct, &fused, &canon);
    }

    /// Llama 4's `down_proj`: each expert's `[d, hidden]` transposed on its own.
    #[test]
    fn transposed_blocks_round_trip() {
        let mut canon = BTreeMap::new();
        let mut pieces = Vec::new();
        for e in 0..3 {
            let name = format!("e{e}.down");
            canon.insert(name.clone(), host(&[2, 5], 50.0 * e as f32));
            pieces.push(Piece {
                canonical: name,
                row_start: 0,
                rows: 2,
            });
        }
        let ct = CheckpointTensor {
            name: "down_proj".into(),
            shape: vec![3, 5, 2],
            pieces,
            transpose: true,
            blocks: 3,
            interleave: false,
        };
        let fused = fuse(&ct, &canon).expect("fuses");
        assert_eq!(fused.data[10 + 3 * 2 + 1], canon["e1.down"].data[5 + 3]);
        assert_splits_back(&ct, &fused, &canon);
    }
}
