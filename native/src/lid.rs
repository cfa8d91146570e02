//! fastText supervised-model inference (language identification), written to be
//! bit-compatible with the C++ fastText 0.9.2 (and its fork `fasttext-predict`).
//!
//! Only what `FastText::predictLine(text + "\n", k = 1, threshold = 0.0)` needs for
//! lid.176 is implemented: model loading (.bin / quantized .ftz), tokenisation, subword
//! hashing, the hidden-vector average and the hierarchical-softmax top-1 search. Other
//! losses and word n-grams > 1 are refused at load time.
//!
//! Float semantics mirror the C++ code (`real` = f32). Where C++ mixes `float` and
//! `double` (e.g. `std::log(x + 1e-5)`), the same promotions/roundings are made
//! here explicitly. `f32::exp` / `f64::ln` call the same glibc `expf` / `log` the C++
//! library calls, so results are identical on the same machine.
//!
//! Std only, no unsafe.

const FASTTEXT_MAGIC: i32 = 793712314;
const FASTTEXT_VERSION: i32 = 12;
const EOS: &[u8] = b"</s>";
const LABEL_PREFIX: &[u8] = b"__label__";
/// Number of centroids per sub-quantizer (`ProductQuantizer::ksub_`).
const KSUB: usize = 256;

// enum values from args.h
const LOSS_HS: i32 = 1;
const MODEL_SUP: i32 = 3;

/// Little-endian cursor over the model file bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() - self.pos < n {
            return Err(format!("unexpected end of model file at byte {}", self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn f64(&mut self) -> Result<f64, String> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn f32_vec(&mut self, n: usize) -> Result<Vec<f32>, String> {
        let bytes = self.take(n.checked_mul(4).ok_or("matrix too large")?)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }
    /// NUL-terminated string, as written by `Dictionary::save`.
    fn cstr(&mut self) -> Result<Vec<u8>, String> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or("unterminated dictionary entry")?;
        let s = rest[..end].to_vec();
        self.pos += end + 1;
        Ok(s)
    }
}

/// `Dictionary::hash`: FNV-1a where each byte goes through `int8_t` (sign
/// extension) before the xor, exactly as in fastText >= 0.9.
#[inline]
fn fnv_hash(bytes: &[u8]) -> u32 {
    let mut h: u32 = 2166136261;
    for &b in bytes {
        h ^= b as i8 as i32 as u32;
        h = h.wrapping_mul(16777619);
    }
    h
}

/// `std_log` in loss.cc: `real std_log(real x) { return std::log(x + 1e-5); }`
/// -> x is widened to double, log in double, result rounded to float.
#[inline]
fn std_log(x: f32) -> f32 {
    ((x as f64) + 1e-5).ln() as f32
}

/// One matrix decoded to dense f32 rows.
///
/// For an input QuantMatrix, C++ adds `alpha * c[n]` (alpha = quantized norm, or 1)
/// to the hidden vector; we store that rounded f32 product, so adding it later
/// gives the same bits. For the output matrix the norm multiplies the finished dot
/// product (`mulcode` returns `res * alpha`), so we keep it apart in `norms`.
struct Rows {
    dim: usize,
    data: Vec<f32>,
    /// Per-row factor applied after the dot product (output matrix only); 1.0 otherwise.
    norms: Vec<f32>,
}

/// Raw `ProductQuantizer` as serialised.
struct Pq {
    nsubq: usize,
    dsub: usize,
    lastdsub: usize,
    centroids: Vec<f32>,
}

impl Pq {
    fn load(r: &mut Reader) -> Result<Pq, String> {
        let dim = r.i32()?;
        let nsubq = r.i32()?;
        let dsub = r.i32()?;
        let lastdsub = r.i32()?;
        if dim < 0 || nsubq <= 0 || dsub <= 0 || lastdsub <= 0 {
            return Err("bad product quantizer header".into());
        }
        let centroids = r.f32_vec(dim as usize * KSUB)?;
        Ok(Pq {
            nsubq: nsubq as usize,
            dsub: dsub as usize,
            lastdsub: lastdsub as usize,
            centroids,
        })
    }
    /// `ProductQuantizer::get_centroids`: the last sub-quantizer is laid out with `lastdsub`.
    fn centroid(&self, m: usize, i: u8) -> Result<&[f32], String> {
        let (start, d) = if m == self.nsubq - 1 {
            (
                m * KSUB * self.dsub + i as usize * self.lastdsub,
                self.lastdsub,
            )
        } else {
            ((m * KSUB + i as usize) * self.dsub, self.dsub)
        };
        self.centroids
            .get(start..start + d)
            .ok_or_else(|| "centroid index out of range".to_string())
    }
}

/// Reads a `DenseMatrix` (`quant == false`) or a `QuantMatrix` and decodes it.
/// `norm_into_rows`: true for the input matrix (see `Rows`).
fn load_matrix(r: &mut Reader, quant: bool, norm_into_rows: bool) -> Result<Rows, String> {
    if !quant {
        let m = r.i64()?;
        let n = r.i64()?;
        if m < 0 || n <= 0 {
            return Err("bad dense matrix header".into());
        }
        let (m, n) = (m as usize, n as usize);
        let data = r.f32_vec(m.checked_mul(n).ok_or("matrix too large")?)?;
        return Ok(Rows {
            dim: n,
            data,
            norms: vec![1.0; m],
        });
    }
    let qnorm = r.u8()? != 0;
    let m = r.i64()?;
    let n = r.i64()?;
    let codesize = r.i32()?;
    if m < 0 || n <= 0 || codesize < 0 {
        return Err("bad quantized matrix header".into());
    }
    let (m, n) = (m as usize, n as usize);
    let codes = r.take(codesize as usize)?;
    let pq = Pq::load(r)?;
    let mut norms = vec![1.0f32; m];
    if qnorm {
        let norm_codes = r.take(m)?;
        let npq = Pq::load(r)?;
        for (i, &c) in norm_codes.iter().enumerate() {
            // QuantMatrix: `norm = npq_->get_centroids(0, norm_codes_[i])[0]`
            norms[i] = npq.centroid(0, c)?[0];
        }
    }
    if (pq.nsubq - 1) * pq.dsub + pq.lastdsub != n || codes.len() < m * pq.nsubq {
        return Err("quantizer does not match matrix shape".into());
    }
    let mut data = vec![0.0f32; m * n];
    for row in 0..m {
        let code = &codes[pq.nsubq * row..pq.nsubq * (row + 1)];
        let alpha = if norm_into_rows { norms[row] } else { 1.0 };
        for (sq, &c) in code.iter().enumerate() {
            let cent = pq.centroid(sq, c)?;
            for (k, &v) in cent.iter().enumerate() {
                // addcode: `x[m * dsub_ + n] += alpha * c[n]` -> precompute the f32 product.
                data[row * n + sq * pq.dsub + k] = alpha * v;
            }
        }
    }
    if norm_into_rows {
        norms = vec![1.0; m];
    }
    Ok(Rows {
        dim: n,
        data,
        norms,
    })
}

impl Rows {
    #[inline]
    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
    /// `dotRow`: sequential f32 accumulation in index order, then `* norm`
    /// (mulcode's `res * alpha`; exact identity for dense matrices where norm = 1).
    #[inline]
    fn dot_row(&self, v: &[f32], i: usize) -> f32 {
        let mut res = 0.0f32;
        for (a, b) in v.iter().zip(self.row(i)) {
            res += a * b;
        }
        res * self.norms[i]
    }
}

/// Open-addressing i32 -> i32 map for the pruned-bucket index (replaces the C++
/// `unordered_map`; only lookups matter, so any exact map is equivalent).
/// Key and value share a slot so a probe touches one cache line.
struct IntMap {
    mask: usize,
    slots: Vec<(i32, i32)>, // key -1 = empty (keys are bucket ids >= 0)
}

impl IntMap {
    fn new(pairs: &[(i32, i32)]) -> IntMap {
        let cap = (pairs.len() * 2 + 1).next_power_of_two().max(16);
        let mut m = IntMap {
            mask: cap - 1,
            slots: vec![(-1, 0); cap],
        };
        for &(k, v) in pairs {
            if k < 0 {
                continue; // never looked up: pushHash returns early for id < 0
            }
            let mut s = m.slot(k);
            while m.slots[s].0 != -1 && m.slots[s].0 != k {
                s = (s + 1) & m.mask;
            }
            // `pruneidx_[first] = second`: later duplicates overwrite.
            m.slots[s] = (k, v);
        }
        m
    }
    #[inline]
    fn slot(&self, k: i32) -> usize {
        ((k as u32).wrapping_mul(2654435761) as usize) & self.mask
    }
    #[inline]
    fn get(&self, k: i32) -> Option<i32> {
        let mut s = self.slot(k);
        loop {
            let (key, val) = self.slots[s];
            if key == k {
                return Some(val);
            }
            if key == -1 {
                return None;
            }
            s = (s + 1) & self.mask;
        }
    }
}

/// Huffman-tree node (loss.cc `HierarchicalSoftmaxLoss::Node`).
#[derive(Clone, Copy)]
struct Node {
    parent: i32,
    left: i32,
    right: i32,
    count: i64,
    binary: bool,
}

pub struct LidModel {
    bucket: i32,
    minn: usize,
    maxn: usize,
    nwords: i32,
    /// Dictionary words (bytes), in file order; labels follow the words.
    words: Vec<Vec<u8>>,
    is_label: Vec<bool>,
    /// Labels with the "__label__" prefix removed, indexed by label id.
    labels: Vec<String>,
    /// `Dictionary::word2int_` (open addressing, linear probing, FNV hash).
    word2int: Vec<i32>,
    /// Flattened `entry.subwords` (initNgrams) for every dictionary entry.
    sub_start: Vec<u32>,
    sub_ids: Vec<i32>,
    /// `pruneidx_size_`: -1 = not pruned, 0 = everything pruned.
    pruneidx_size: i64,
    pruneidx: IntMap,
    input: Rows,
    output: Rows,
    tree: Vec<Node>,
    osz: i32,
}

impl LidModel {
    pub fn load(path: &str) -> Result<LidModel, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {}", path, e))?;
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<LidModel, String> {
        let mut r = Reader { buf: bytes, pos: 0 };
        // FastText::checkModel
        let magic = r.i32()?;
        let version = r.i32()?;
        if magic != FASTTEXT_MAGIC {
            return Err("not a fastText model (bad magic)".into());
        }
        if version > FASTTEXT_VERSION {
            return Err(format!("unsupported fastText model version {}", version));
        }
        // Args::load (13 fields)
        let dim = r.i32()?;
        let _ws = r.i32()?;
        let _epoch = r.i32()?;
        let _min_count = r.i32()?;
        let _neg = r.i32()?;
        let word_ngrams = r.i32()?;
        let loss = r.i32()?;
        let model = r.i32()?;
        let bucket = r.i32()?;
        let minn = r.i32()?;
        let mut maxn = r.i32()?;
        let _lr_update_rate = r.i32()?;
        let _t = r.f64()?;
        if model != MODEL_SUP {
            return Err("model is not supervised".into());
        }
        // lid.176's shape; other losses and word n-grams are not implemented (untested)
        if loss != LOSS_HS {
            return Err(format!(
                "unsupported loss {loss} (only hierarchical softmax)"
            ));
        }
        if word_ngrams > 1 {
            return Err(format!("unsupported wordNgrams {word_ngrams} (only 1)"));
        }
        if version == 11 {
            // backward compatibility: old supervised models do not use char ngrams.
            maxn = 0;
        }

        // Dictionary::load
        let size = r.i32()?;
        let nwords = r.i32()?;
        let nlabels = r.i32()?;
        let _ntokens = r.i64()?;
        let pruneidx_size = r.i64()?;
        if size < 0 || nwords < 0 || nlabels <= 0 || nwords + nlabels > size {
            return Err("bad dictionary header".into());
        }
        let mut words = Vec::with_capacity(size as usize);
        let mut is_label = Vec::with_capacity(size as usize);
        let mut label_counts = Vec::new(); // Dictionary::getCounts(entry_type::label)
        for _ in 0..size {
            words.push(r.cstr()?);
            let count = r.i64()?;
            let label = r.u8()? == 1; // entry_type is an int8_t enum: word=0, label=1
            if label {
                label_counts.push(count);
            }
            is_label.push(label);
        }
        let mut pairs = Vec::with_capacity(pruneidx_size.max(0) as usize);
        for _ in 0..pruneidx_size.max(0) {
            let a = r.i32()?;
            let b = r.i32()?;
            pairs.push((a, b));
        }

        let mut m = LidModel {
            bucket,
            minn: minn.max(0) as usize,
            maxn: maxn.max(0) as usize,
            nwords,
            words,
            is_label,
            labels: Vec::new(),
            word2int: Vec::new(),
            sub_start: Vec::new(),
            sub_ids: Vec::new(),
            pruneidx_size,
            pruneidx: IntMap::new(&pairs),
            input: Rows {
                dim: 0,
                data: vec![],
                norms: vec![],
            },
            output: Rows {
                dim: 0,
                data: vec![],
                norms: vec![],
            },
            tree: Vec::new(),
            osz: nlabels,
        };

        // initNgrams: subwords = [i] + char n-grams of "<word>" (none for EOS).
        let mut scratch = Vec::new();
        m.sub_start.push(0);
        for i in 0..m.words.len() {
            m.sub_ids.push(i as i32);
            if m.words[i] != EOS {
                let mut ids = Vec::new();
                m.compute_subwords(&m.words[i], &mut scratch, &mut |id| ids.push(id));
                m.sub_ids.extend(ids);
            }
            m.sub_start.push(m.sub_ids.len() as u32);
        }
        // word2int_ of size ceil(size / 0.7)
        let w2i_size = ((size as f64) / 0.7).ceil() as usize;
        m.word2int = vec![-1; w2i_size.max(1)];
        for i in 0..m.words.len() {
            let slot = m.find(&m.words[i], fnv_hash(&m.words[i]));
            m.word2int[slot] = i as i32;
        }
        // getLabel(lid) = words_[lid + nwords_]
        for lid in 0..nlabels {
            let w = &m.words[(nwords + lid) as usize];
            let w = w.strip_prefix(LABEL_PREFIX).unwrap_or(w);
            m.labels.push(String::from_utf8_lossy(w).into_owned());
        }

        // FastText::loadModel: quant flag, input matrix, qout flag, output matrix.
        let quant_input = r.u8()? != 0;
        m.input = load_matrix(&mut r, quant_input, true)?;
        if !quant_input && pruneidx_size >= 0 {
            return Err(
                "invalid model: pruned dictionary with a non-quantized input matrix".into(),
            );
        }
        let qout = r.u8()? != 0;
        m.output = load_matrix(&mut r, quant_input && qout, false)?;
        if m.input.dim != dim as usize || m.output.dim != dim as usize {
            return Err("matrix dimension does not match args.dim".into());
        }
        if m.output.norms.len() != nlabels as usize {
            return Err("output matrix rows != number of labels".into());
        }
        if m.input.norms.len() < (nwords as usize) {
            return Err("input matrix too small".into());
        }

        if label_counts.len() != nlabels as usize {
            return Err("label entry count != nlabels".into());
        }
        m.build_tree(&label_counts);
        Ok(m)
    }

    /// HierarchicalSoftmaxLoss::buildTree (Huffman tree over label counts).
    fn build_tree(&mut self, counts: &[i64]) {
        let osz = self.osz as usize;
        let mut tree = vec![
            Node {
                parent: -1,
                left: -1,
                right: -1,
                count: 1e15 as i64,
                binary: false
            };
            2 * osz - 1
        ];
        for i in 0..osz {
            tree[i].count = counts[i];
        }
        let mut leaf = osz as i64 - 1;
        let mut node = osz;
        for i in osz..2 * osz - 1 {
            let mut mini = [0usize; 2];
            for slot in mini.iter_mut() {
                if leaf >= 0 && tree[leaf as usize].count < tree[node].count {
                    *slot = leaf as usize;
                    leaf -= 1;
                } else {
                    *slot = node;
                    node += 1;
                }
            }
            tree[i].left = mini[0] as i32;
            tree[i].right = mini[1] as i32;
            tree[i].count = tree[mini[0]].count + tree[mini[1]].count;
            tree[mini[0]].parent = i as i32;
            tree[mini[1]].parent = i as i32;
            tree[mini[1]].binary = true;
        }
        self.tree = tree;
    }

    /// Dictionary::find: slot of `w` (or the empty slot where it would go).
    #[inline]
    fn find(&self, w: &[u8], h: u32) -> usize {
        let n = self.word2int.len();
        let mut id = (h as usize) % n;
        loop {
            let wid = self.word2int[id];
            if wid == -1 || self.words[wid as usize] == w {
                return id;
            }
            id = (id + 1) % n;
        }
    }

    /// Dictionary::pushHash: maps a bucket id through the prune index.
    #[inline]
    fn push_hash(&self, id: i32, out: &mut impl FnMut(i32)) {
        if self.pruneidx_size == 0 || id < 0 {
            return;
        }
        let id = if self.pruneidx_size > 0 {
            match self.pruneidx.get(id) {
                Some(v) => v,
                None => return,
            }
        } else {
            id
        };
        out(self.nwords + id);
    }

    /// Dictionary::computeSubwords on "<" + token + ">": all n-grams of minn..maxn
    /// UTF-8 characters (continuation bytes never start a char), skipping the
    /// 1-grams "<" and ">".
    fn compute_subwords(&self, token: &[u8], scratch: &mut Vec<u8>, out: &mut impl FnMut(i32)) {
        scratch.clear();
        scratch.push(b'<');
        scratch.extend_from_slice(token);
        scratch.push(b'>');
        let word = &scratch[..];
        let len = word.len();
        for i in 0..len {
            if (word[i] & 0xC0) == 0x80 {
                continue;
            }
            // The n-gram grows by appending bytes, so its FNV hash is built incrementally.
            let mut h: u32 = 2166136261;
            let mut j = i;
            let mut n = 1;
            while j < len && n <= self.maxn {
                h = (h ^ (word[j] as i8 as i32 as u32)).wrapping_mul(16777619);
                j += 1;
                while j < len && (word[j] & 0xC0) == 0x80 {
                    h = (h ^ (word[j] as i8 as i32 as u32)).wrapping_mul(16777619);
                    j += 1;
                }
                if n >= self.minn && !(n == 1 && (i == 0 || j == len)) {
                    // `hash(ngram) % args_->bucket`: unsigned modulo, result as int32
                    let id = (h % (self.bucket as u32)) as i32;
                    self.push_hash(id, out);
                }
                n += 1;
            }
        }
    }

    /// Dictionary::getLine on `text + "\n"` (word n-grams of 1: nothing added): calls `out`
    /// with every input-row id in the order C++ puts them in `words`.
    fn line_ids(&self, text: &str, out: &mut impl FnMut(i32)) {
        let bytes = text.as_bytes();
        // readWord stops the line at the first '\n'; our appended "\n" ends it otherwise.
        let line = match bytes.iter().position(|&b| b == b'\n') {
            Some(p) => &bytes[..p],
            None => bytes,
        };
        let mut scratch = Vec::with_capacity(64);
        let is_ws = |c: u8| matches!(c, b' ' | b'\n' | b'\r' | b'\t' | 0x0b | 0x0c | 0);
        // Tokens of the line, then the EOS produced by the terminating "\n".
        let tokens = line
            .split(|&c| is_ws(c))
            .filter(|t| !t.is_empty())
            .chain(std::iter::once(EOS));
        for token in tokens {
            let h = fnv_hash(token);
            let wid = self.word2int[self.find(token, h)];
            let is_label = if wid < 0 {
                token.starts_with(LABEL_PREFIX)
            } else {
                self.is_label[wid as usize]
            };
            if is_label {
                continue; // labels in the input only fill `labels`, unused by predict
            }
            // addSubwords
            if wid < 0 {
                if token != EOS {
                    self.compute_subwords(token, &mut scratch, out);
                }
            } else if self.maxn == 0 {
                out(wid);
            } else {
                let (a, b) = (
                    self.sub_start[wid as usize] as usize,
                    self.sub_start[wid as usize + 1] as usize,
                );
                for &id in &self.sub_ids[a..b] {
                    out(id);
                }
            }
            if token == EOS {
                break; // getLine: a literal "</s>" token also ends the line
            }
        }
    }

    /// Model::computeHidden: sum of input rows in order, then `mul(1.0 / n)` where
    /// the double 1.0/n is rounded to float before the multiplications.
    fn hidden(&self, text: &str) -> Option<Vec<f32>> {
        let mut hidden = vec![0.0f32; self.input.dim];
        let mut count: usize = 0;
        let input = &self.input;
        self.line_ids(text, &mut |id| {
            count += 1;
            for (x, v) in hidden.iter_mut().zip(input.row(id as usize)) {
                *x += *v;
            }
        });
        if count == 0 {
            return None; // FastText::predict returns no prediction for an empty line
        }
        let a = (1.0f64 / count as f64) as f32;
        for x in hidden.iter_mut() {
            *x *= a;
        }
        Some(hidden)
    }

    /// HierarchicalSoftmaxLoss::dfs specialised to k = 1. `best` is the heap of
    /// size <= 1: (score, node).
    fn dfs(
        &self,
        threshold_log: f32,
        node: usize,
        score: f32,
        best: &mut Option<(f32, usize)>,
        hidden: &[f32],
    ) {
        if score < threshold_log {
            return;
        }
        if let Some((s, _)) = *best {
            if score < s {
                return;
            }
        }
        let nd = &self.tree[node];
        if nd.left == -1 && nd.right == -1 {
            // push_heap + pop_heap of the smallest: with equal scores the new leaf wins.
            *best = Some((score, node));
            return;
        }
        let f = self.output.dot_row(hidden, node - self.osz as usize);
        // `f = 1. / (1 + std::exp(-f))`: std::exp(float) is expf, `1 + float` is
        // float, the division is double, the result is stored as float.
        let f = (1.0f64 / ((1.0f32 + (-f).exp()) as f64)) as f32;
        // std_log(1.0 - f): the double 1.0 - f is converted to float (parameter type).
        self.dfs(
            threshold_log,
            nd.left as usize,
            score + std_log((1.0f64 - f as f64) as f32),
            best,
            hidden,
        );
        self.dfs(
            threshold_log,
            nd.right as usize,
            score + std_log(f),
            best,
            hidden,
        );
    }

    /// Top-1 prediction for `text` exactly as fastText's predict of `text + "\n"` with
    /// k = 1 and threshold = 0.0: Some((label without "__label__", probability)).
    pub fn predict(&self, text: &str) -> Option<(&str, f32)> {
        let hidden = self.hidden(text)?;
        let threshold: f32 = 0.0;
        let mut best = None;
        self.dfs(
            std_log(threshold),
            2 * self.osz as usize - 2,
            0.0,
            &mut best,
            &hidden,
        );
        let (score, idx) = best?;
        // predictLine: `std::exp(p.first)` on a float -> expf
        Some((self.labels[idx].as_str(), score.exp()))
    }
}
