//! PDQ perceptual hash of an RGB image, with the GIL released.
//!
//! The download stage hashes every stored image. Through `pdqhash` (the reference C++ behind
//! a Python wrapper that holds the GIL) a task's 32 download threads serialised on it: with
//! PDQ a single process fetched and stored 280-380 images/s, without it 780-930. This is the
//! same algorithm step for step, in the same float arithmetic and order (luma in double as
//! pdqhash's wrapper makes it, two passes of
//! Jarosz box filters per axis, decimation to 64x64 at pixel centres, the 16x16 corner of the
//! 2-D DCT, bits above the lower median, the gradient quality metric), so it gives the same
//! bits; tests/test_takedown_pdq.py checks that against `pdqhash` on varied images.

const MIN_HASHABLE_DIM: usize = 5;
const JAROSZ_PASSES: usize = 2;

fn dct_matrix() -> [f32; 16 * 64] {
    let scale = (2.0f64 / 64.0).sqrt() as f32;
    let mut d = [0f32; 16 * 64];
    for i in 0..16 {
        for j in 0..64 {
            let angle = (std::f64::consts::PI / 2.0 / 64.0) * ((i + 1) as f64) * ((2 * j + 1) as f64);
            d[i * 64 + j] = (scale as f64 * angle.cos()) as f32; // float scale, double product
        }
    }
    d
}

fn window_size(old: usize, new: usize) -> usize {
    (old + 2 * new - 1) / (2 * new)
}

/// The reference's 1-D box filter (growing window, full window, shrinking window) down every
/// column of `input` (rows x cols, row-major) into `output`. The columns advance together, so
/// the inner loops run over contiguous memory and vectorise; each output value is the same
/// sequence of float operations as the reference's, so the same bits.
fn box_down_columns(input: &[f32], output: &mut [f32], rows: usize, cols: usize, full: usize) {
    let half = (full + 2) / 2;
    let phase1 = half - 1;
    let phase2 = full - half + 1;
    let phase3 = rows.saturating_sub(full);
    let phase4 = half - 1;
    let (mut li, mut ri, mut oi) = (0usize, 0usize, 0usize);
    let mut sum = vec![0f32; cols];
    let mut window = 0i32;
    for _ in 0..phase1 {
        for (s, x) in sum.iter_mut().zip(&input[ri * cols..(ri + 1) * cols]) {
            *s += *x;
        }
        window += 1;
        ri += 1;
    }
    for _ in 0..phase2 {
        window += 1;
        let w = window as f32;
        let (src, dst) = (&input[ri * cols..(ri + 1) * cols], &mut output[oi * cols..(oi + 1) * cols]);
        for ((s, x), o) in sum.iter_mut().zip(src).zip(dst.iter_mut()) {
            *s += *x;
            *o = *s / w;
        }
        ri += 1;
        oi += 1;
    }
    for _ in 0..phase3 {
        let w = window as f32;
        let add = &input[ri * cols..(ri + 1) * cols];
        let sub = &input[li * cols..(li + 1) * cols];
        let dst = &mut output[oi * cols..(oi + 1) * cols];
        for (((s, a), b), o) in sum.iter_mut().zip(add).zip(sub).zip(dst.iter_mut()) {
            *s += *a;
            *s -= *b;
            *o = *s / w;
        }
        li += 1;
        ri += 1;
        oi += 1;
    }
    for _ in 0..phase4 {
        window -= 1;
        let w = window as f32;
        let sub = &input[li * cols..(li + 1) * cols];
        let dst = &mut output[oi * cols..(oi + 1) * cols];
        for ((s, b), o) in sum.iter_mut().zip(sub).zip(dst.iter_mut()) {
            *s -= *b;
            *o = *s / w;
        }
        li += 1;
        oi += 1;
    }
}

/// The same filter along one row (contiguous values).
fn box_along_row(input: &[f32], output: &mut [f32], full: usize) {
    let len = input.len();
    let half = (full + 2) / 2;
    let (phase1, phase2) = (half - 1, full - half + 1);
    let (phase3, phase4) = (len.saturating_sub(full), half - 1);
    let (mut li, mut ri, mut oi) = (0usize, 0usize, 0usize);
    let mut sum = 0f32;
    let mut window = 0i32;
    for _ in 0..phase1 {
        sum += input[ri];
        window += 1;
        ri += 1;
    }
    for _ in 0..phase2 {
        sum += input[ri];
        window += 1;
        output[oi] = sum / window as f32;
        ri += 1;
        oi += 1;
    }
    for _ in 0..phase3 {
        sum += input[ri];
        sum -= input[li];
        output[oi] = sum / window as f32;
        li += 1;
        ri += 1;
        oi += 1;
    }
    for _ in 0..phase4 {
        sum -= input[li];
        window -= 1;
        output[oi] = sum / window as f32;
        li += 1;
        oi += 1;
    }
}

/// Two passes of a box filter along the rows then down the columns, result in `buf1`.
fn jarosz(buf1: &mut [f32], buf2: &mut [f32], rows: usize, cols: usize, w_rows: usize, w_cols: usize) {
    for _ in 0..JAROSZ_PASSES {
        for (src, dst) in buf1.chunks_exact(cols).zip(buf2.chunks_exact_mut(cols)) {
            box_along_row(src, dst, w_rows);
        }
        box_down_columns(buf2, buf1, rows, cols, w_cols);
    }
}

fn quality(a: &[[f32; 64]; 64]) -> i32 {
    let mut sum: i32 = 0;
    for i in 0..63 {
        for j in 0..64 {
            let d = ((a[i][j] - a[i + 1][j]) * 100.0) / 255.0;
            sum += (d as i32).abs();
        }
    }
    for i in 0..64 {
        for j in 0..63 {
            let d = ((a[i][j] - a[i][j + 1]) * 100.0) / 255.0;
            sum += (d as i32).abs();
        }
    }
    (sum / 90).min(100)
}

/// (32 bytes of hash: the bit of DCT coefficient k at position 255 - k, most significant
/// bit first, as `pdqhash` lists them; quality)
/// of `rgb` (rows x cols x 3, row-major); all-zero bits and quality 0 below 5 pixels a side.
pub fn hash_rgb(rgb: &[u8], rows: usize, cols: usize) -> ([u8; 32], i32) {
    let mut bits = [0u8; 32];
    if rows < MIN_HASHABLE_DIM || cols < MIN_HASHABLE_DIM {
        return (bits, 0);
    }
    let n = rows * cols;
    let mut buf1 = vec![0f32; n];
    for (k, px) in rgb.chunks_exact(3).take(n).enumerate() {
        // in double, then rounded once: how pdqhash's wrapper (numpy) makes the luma it hashes
        let y = px[0] as f64 * 0.299 + px[1] as f64 * 0.587 + px[2] as f64 * 0.114;
        buf1[k] = y as f32;
    }
    let mut a = [[0f32; 64]; 64];
    if rows == 64 && cols == 64 {
        for i in 0..64 {
            a[i].copy_from_slice(&buf1[i * 64..(i + 1) * 64]);
        }
    } else {
        let mut buf2 = vec![0f32; n];
        jarosz(&mut buf1, &mut buf2, rows, cols, window_size(cols, 64), window_size(rows, 64));
        for (oi, row) in a.iter_mut().enumerate() {
            let ini = (((oi as f64 + 0.5) * rows as f64) / 64.0) as usize;
            for (oj, v) in row.iter_mut().enumerate() {
                let inj = (((oj as f64 + 0.5) * cols as f64) / 64.0) as usize;
                *v = buf1[ini * cols + inj];
            }
        }
    }
    let q = quality(&a);
    // B = D A D^T, only the 16x16 corner after the DC terms
    let d = dct_matrix();
    let mut t = [[0f32; 64]; 16];
    for i in 0..16 {
        for j in 0..64 {
            let mut s = 0f32;
            for k in 0..64 {
                s += d[i * 64 + k] * a[k][j];
            }
            t[i][j] = s;
        }
    }
    let mut b = [0f32; 256];
    for i in 0..16 {
        for j in 0..16 {
            let mut s = 0f32;
            for k in 0..64 {
                s += t[i][k] * d[j * 64 + k];
            }
            b[i * 16 + j] = s;
        }
    }
    // Torben's median of 256 values is the 128th smallest
    let mut sorted = b;
    sorted.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
    let median = sorted[127];
    for (k, v) in b.iter().enumerate() {
        if *v > median {
            let p = 255 - k; // written from the last DCT coefficient down, as pdqhash does
            bits[p / 8] |= 0x80 >> (p % 8);
        }
    }
    (bits, q)
}
