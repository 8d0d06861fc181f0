//! Linear probes solved to convergence: L2-regularised logistic regression (multinomial, or
//! one sigmoid per output for multi-label and ordinal heads) minimised with L-BFGS in plain
//! `f64`.
//!
//! The objective for weights `W` (`[d, k]`) and biases `b` (`[k]`, not penalised) is
//!
//! `(1/n) Σ_i s_i ℓ_i(x_i W + b) + (λ/2) ‖W‖²`
//!
//! with `s_i` the sample weights (1, or the class weights) and `ℓ_i` the cross-entropy of
//! sample `i` (softmax), or the sum over outputs of its binary cross-entropies (sigmoid).
//! This is scikit-learn's `LogisticRegression(C)` objective divided by `C·n`, so `λ = 1/(C·n)`.
//!
//! With fewer samples than features (a few hundred cells, 1280 features) the optimum lies in
//! the span of the samples, so the problem is solved in that span: a pivoted Cholesky factor
//! `Z` of the Gram matrix `X Xᵀ` (`Z Zᵀ = X Xᵀ`, `n × r`) stands in for `X`, and the weights
//! are mapped back as `W = Xᵀ Z (ZᵀZ)⁻¹ B`. Same optimum, a fraction of the work.

mod linalg;

use linalg::{gram_of_columns, pivoted_cholesky, solve_spd};

/// What each sample is trained towards.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// One class per sample, softmax over `k` outputs.
    Softmax { classes: &'a [usize], k: usize },
    /// `k` independent sigmoid outputs per sample: `t[i * k + j]` in {0, 1}, and a weight on
    /// the positive term of each output.
    ///
    /// With `shared`, the outputs share one weight vector and differ only by their bias
    /// (CORAL, Cao et al. 2020): output `j` is `x·w + b_j`, so for ordered thresholds
    /// `P(grade > j)` can only fall as `j` grows once the biases are non-increasing.
    Sigmoid {
        t: &'a [f64],
        k: usize,
        pos_weight: &'a [f64],
        shared: bool,
    },
}

impl Targets<'_> {
    pub fn outputs(&self) -> usize {
        match self {
            Self::Softmax { k, .. } | Self::Sigmoid { k, .. } => *k,
        }
    }

    /// Weight columns: one per output, or one shared by all.
    pub fn weight_columns(&self) -> usize {
        match self {
            Self::Sigmoid { shared: true, .. } => 1,
            _ => self.outputs(),
        }
    }
}

/// A solved probe.
#[derive(Clone, Debug)]
pub struct Fit {
    /// `[d, cols]`, row-major: `weight[f * cols + c]`; `cols` is the output count, or 1 for
    /// outputs sharing their weights (output `j` then uses column 0).
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
    /// Value of the objective at the solution.
    pub objective: f64,
    /// Largest absolute gradient entry at the solution.
    pub grad_max: f64,
    pub iterations: usize,
    /// The parameters in the coordinates the solver worked in (`[B; b]` in a rows' span),
    /// to warm-start another fit on the same [`Design`].
    pub solved: Vec<f64>,
    /// Weight columns (see [`Fit::weight`]).
    pub columns: usize,
}

impl Fit {
    /// Logits of one feature row.
    pub fn logits(&self, x: &[f64]) -> Vec<f64> {
        let cols = self.columns.max(1);
        let mut xw = vec![0.0; cols];
        for (f, &v) in x.iter().enumerate() {
            let row = &self.weight[f * cols..(f + 1) * cols];
            for (a, &w) in xw.iter_mut().zip(row) {
                *a += v * w;
            }
        }
        self.bias
            .iter()
            .enumerate()
            .map(|(j, b)| b + xw[j % cols])
            .collect()
    }

    /// Makes the biases non-increasing (each at most the one before it). For outputs that
    /// share their weights (ordered thresholds) every `P(grade > j)` is then at most
    /// `P(grade > j − 1)`, on any input. At the optimum of a shared-weight fit the biases are
    /// already ordered (Cao et al. 2020, theorem 1); this guards the last rounding.
    pub fn order_biases(&mut self) {
        for j in 1..self.bias.len() {
            self.bias[j] = self.bias[j].min(self.bias[j - 1]);
        }
    }

    /// The weights as `[d][outputs]` rows (a shared column repeated for every output).
    pub fn weight_rows(&self) -> Vec<Vec<f64>> {
        let k = self.bias.len();
        let cols = self.columns.max(1);
        self.weight
            .chunks(cols)
            .map(|row| (0..k).map(|j| row[j % cols]).collect())
            .collect()
    }
}

/// Stopping rule of the solver.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// Stop when no gradient entry is larger than this.
    pub grad_max: f64,
    pub max_iterations: usize,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self {
            grad_max: 1e-6,
            max_iterations: 1000,
        }
    }
}

/// Objective and gradient (`[W; b]`, row-major `W`) at `params` for rows `x` (`n × d`).
pub fn objective(
    x: &[f64],
    d: usize,
    targets: Targets,
    sample_weight: &[f64],
    l2: f64,
    params: &[f64],
    grad: &mut [f64],
) -> f64 {
    let k = targets.outputs();
    let cols = targets.weight_columns();
    let n = sample_weight.len();
    let (w, b) = params.split_at(d * cols);
    grad.iter_mut().for_each(|g| *g = 0.0);
    let (gw, gb) = grad.split_at_mut(d * cols);
    let mut loss = 0.0;
    let mut z = vec![0.0; k];
    let mut r = vec![0.0; k];
    let mut xw = vec![0.0; cols];
    let mut rc_sum = vec![0.0; cols];
    // Weights and their gradient by column (`[cols][d]`), so that each row meets contiguous
    // vectors (a dot product and an axpy per column).
    let mut wt = vec![0.0; cols * d];
    for f in 0..d {
        for c in 0..cols {
            wt[c * d + f] = w[f * cols + c];
        }
    }
    let mut gwt = vec![0.0; cols * d];
    for i in 0..n {
        let row = &x[i * d..(i + 1) * d];
        // Rows in a rows' span (a pivoted Cholesky factor) end in zeros.
        let len = row.iter().rposition(|&v| v != 0.0).map_or(0, |p| p + 1);
        let row = &row[..len];
        for (c, a) in xw.iter_mut().enumerate() {
            *a = dot(row, &wt[c * d..c * d + len]);
        }
        for (j, zj) in z.iter_mut().enumerate() {
            *zj = b[j] + xw[j % cols];
        }
        let s = sample_weight[i] / n as f64;
        match targets {
            Targets::Softmax { classes, .. } => {
                let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
                let log_sum = max + sum.ln();
                let y = classes[i];
                loss += s * (log_sum - z[y]);
                for c in 0..k {
                    r[c] = s * ((z[c] - log_sum).exp() - f64::from(u8::from(c == y)));
                }
            }
            Targets::Sigmoid { t, pos_weight, .. } => {
                for c in 0..k {
                    let (tc, pw, zc) = (t[i * k + c], pos_weight[c], z[c]);
                    // pw·t·softplus(−z) + (1 − t)·softplus(z)
                    loss += s * (pw * tc * softplus(-zc) + (1.0 - tc) * softplus(zc));
                    let p = sigmoid(zc);
                    r[c] = s * (-pw * tc * (1.0 - p) + (1.0 - tc) * p);
                }
            }
        }
        rc_sum.iter_mut().for_each(|v| *v = 0.0);
        for (j, (gbc, &rc)) in gb.iter_mut().zip(&r).enumerate() {
            *gbc += rc;
            rc_sum[j % cols] += rc;
        }
        for (c, &rc) in rc_sum.iter().enumerate() {
            for (g, &v) in gwt[c * d..c * d + len].iter_mut().zip(row) {
                *g += rc * v;
            }
        }
    }
    for f in 0..d {
        for c in 0..cols {
            gw[f * cols + c] = gwt[c * d + f];
        }
    }
    let mut penalty = 0.0;
    for (g, &wv) in gw.iter_mut().zip(w) {
        penalty += wv * wv;
        *g += l2 * wv;
    }
    loss + 0.5 * l2 * penalty
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four running sums: the compiler may then use vector lanes.
    let mut acc = [0.0; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc[0] + acc[1] + acc[2] + acc[3] + tail
}

/// Minimises [`objective`] with L-BFGS (10 pairs, backtracking line search), from `start`
/// (`[W; b]`) or from zero.
pub fn minimise(
    x: &[f64],
    d: usize,
    targets: Targets,
    sample_weight: &[f64],
    l2: f64,
    start: Option<&[f64]>,
    tol: Tolerance,
) -> Fit {
    minimise_scaled(x, d, targets, sample_weight, l2, start, tol, None)
}

/// [`minimise`] with a diagonal `scale` (one positive value per parameter, about the inverse
/// of the objective's curvature along it) as the L-BFGS starting inverse Hessian: the
/// same optimum, in fewer steps when the parameters' curvatures differ by orders of magnitude.
#[allow(clippy::too_many_arguments)]
fn minimise_scaled(
    x: &[f64],
    d: usize,
    targets: Targets,
    sample_weight: &[f64],
    l2: f64,
    start: Option<&[f64]>,
    tol: Tolerance,
    scale: Option<&[f64]>,
) -> Fit {
    let k = targets.outputs();
    let cols = targets.weight_columns();
    let dim = d * cols + k;
    let mut p = start.map_or_else(|| vec![0.0; dim], <[f64]>::to_vec);
    let mut g = vec![0.0; dim];
    let mut f = objective(x, d, targets, sample_weight, l2, &p, &mut g);
    let memory = 10;
    let mut pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let mut iterations = 0;
    let mut p_new = vec![0.0; dim];
    let mut g_new = vec![0.0; dim];
    let grad_max = |g: &[f64]| g.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    while iterations < tol.max_iterations && grad_max(&g) > tol.grad_max {
        iterations += 1;
        // Two-loop recursion: direction = −H·g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(pairs.len());
        for (s, y, rho) in pairs.iter().rev() {
            let a = rho * dot(s, &q);
            for (qi, yi) in q.iter_mut().zip(y) {
                *qi -= a * yi;
            }
            alphas.push(a);
        }
        match scale {
            None => {
                let gamma = pairs.back().map_or_else(
                    || 1.0 / dot(&g, &g).sqrt().max(1e-12),
                    |(s, y, _)| dot(s, y) / dot(y, y),
                );
                q.iter_mut().for_each(|v| *v *= gamma);
            }
            Some(h) => {
                // `H₀ = γ·diag(h)`, γ from the latest pair as for `γ·I`.
                let gamma = pairs.back().map_or_else(
                    || {
                        let hg: f64 = g.iter().zip(h).map(|(a, b)| (a * b).powi(2)).sum();
                        1.0 / hg.sqrt().max(1e-12)
                    },
                    |(s, y, _)| {
                        let yhy: f64 = y.iter().zip(h).map(|(a, b)| a * a * b).sum();
                        dot(s, y) / yhy
                    },
                );
                q.iter_mut().zip(h).for_each(|(v, hv)| *v *= gamma * hv);
            }
        }
        for ((s, y, rho), a) in pairs.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            for (qi, si) in q.iter_mut().zip(s) {
                *qi += (a - b) * si;
            }
        }
        let mut dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        if slope >= 0.0 {
            // Not a descent direction: restart from the gradient.
            pairs.clear();
            dir = g.iter().map(|v| -v).collect();
            slope = -dot(&g, &g);
        }
        // Backtracking line search (Armijo).
        let mut step = 1.0;
        let mut accepted = false;
        for _ in 0..40 {
            for ((pn, pi), di) in p_new.iter_mut().zip(&p).zip(&dir) {
                *pn = pi + step * di;
            }
            let f_new = objective(x, d, targets, sample_weight, l2, &p_new, &mut g_new);
            if f_new.is_finite() && f_new <= f + 1e-4 * step * slope {
                let s: Vec<f64> = p_new.iter().zip(&p).map(|(a, b)| a - b).collect();
                let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
                let sy = dot(&s, &y);
                if sy > 1e-12 * dot(&y, &y).max(1e-300) {
                    if pairs.len() == memory {
                        pairs.pop_front();
                    }
                    pairs.push_back((s, y, 1.0 / sy));
                }
                std::mem::swap(&mut p, &mut p_new);
                std::mem::swap(&mut g, &mut g_new);
                let done = (f - f_new).abs() <= 1e-15 * f.abs().max(1.0);
                f = f_new;
                accepted = !done;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            break;
        }
    }
    let grad_max = grad_max(&g);
    let solved = p.clone();
    let bias = p.split_off(d * cols);
    Fit {
        weight: p,
        bias,
        objective: f,
        grad_max,
        iterations,
        solved,
        columns: cols,
    }
}

/// The rows of one training set, ready for repeated fits (a grid of L2 strengths, class
/// weightings): with fewer rows than features, the rows' span (see the module docs).
pub struct Design {
    /// Original rows, `n × d`.
    x: Vec<f64>,
    n: usize,
    d: usize,
    /// `Z` (`n × r`) when the problem is solved in the rows' span.
    span: Option<(Vec<f64>, usize)>,
}

impl Design {
    pub fn new(x: Vec<f64>, n: usize, d: usize) -> Self {
        assert_eq!(x.len(), n * d, "rows of {d} features");
        let span = (n < d).then(|| {
            let mut gram = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..=i {
                    let v = dot(&x[i * d..(i + 1) * d], &x[j * d..(j + 1) * d]);
                    gram[i * n + j] = v;
                    gram[j * n + i] = v;
                }
            }
            pivoted_cholesky(&gram, n)
        });
        Self { x, n, d, span }
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    /// Solves the probe on these rows; `warm` is an earlier fit on the same design.
    pub fn fit(
        &self,
        targets: Targets,
        sample_weight: &[f64],
        l2: f64,
        warm: Option<&Fit>,
        tol: Tolerance,
    ) -> Fit {
        let start = warm.map(|w| w.solved.as_slice());
        match &self.span {
            None => minimise(&self.x, self.d, targets, sample_weight, l2, start, tol),
            Some((z, r)) => {
                let scale = span_scale(z, *r, targets, sample_weight, l2);
                let mut fit =
                    minimise_scaled(z, *r, targets, sample_weight, l2, start, tol, Some(&scale));
                fit.weight = self.weights_from_span(&fit.weight, targets.weight_columns());
                fit
            }
        }
    }

    /// `W = Xᵀ Z (ZᵀZ)⁻¹ B`.
    fn weights_from_span(&self, b: &[f64], k: usize) -> Vec<f64> {
        let (z, r) = self.span.as_ref().expect("span design");
        let (n, d, r) = (self.n, self.d, *r);
        let c = solve_spd(&gram_of_columns(z, n, r), r, b, k);
        // A = Z C (n × k)
        let mut a = vec![0.0; n * k];
        for i in 0..n {
            for j in 0..r {
                let zij = z[i * r + j];
                for cc in 0..k {
                    a[i * k + cc] += zij * c[j * k + cc];
                }
            }
        }
        let mut w = vec![0.0; d * k];
        for i in 0..n {
            let row = &self.x[i * d..(i + 1) * d];
            for (f, &v) in row.iter().enumerate() {
                for cc in 0..k {
                    w[f * k + cc] += v * a[i * k + cc];
                }
            }
        }
        w
    }
}

/// About the inverse curvature of the objective along each parameter (`[B; b]`) on span
/// rows `z` (`n × r`): `1 / (Σᵢ sᵢ/n · ¼ · zᵢⱼ² + λ)` for column `j`'s weights, `1 / (Σᵢ sᵢ/n · ¼)`
/// for the biases (¼: a logistic's largest curvature). A pivoted Cholesky factor's columns
/// shrink fast, so their curvatures span orders of magnitude.
fn span_scale(z: &[f64], r: usize, targets: Targets, sample_weight: &[f64], l2: f64) -> Vec<f64> {
    let n = sample_weight.len();
    let cols = targets.weight_columns();
    let mut h = vec![0.0; r];
    for (i, &sw) in sample_weight.iter().enumerate() {
        let s = 0.25 * sw / n as f64;
        for (hj, &v) in h.iter_mut().zip(&z[i * r..(i + 1) * r]) {
            *hj += s * v * v;
        }
    }
    let bias = 0.25 * sample_weight.iter().sum::<f64>() / n as f64;
    let mut scale = Vec::with_capacity(r * cols + targets.outputs());
    for hj in h {
        scale.extend(std::iter::repeat_n(1.0 / (hj + l2).max(1e-12), cols));
    }
    scale.extend(std::iter::repeat_n(
        1.0 / bias.max(1e-12),
        targets.outputs(),
    ));
    scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::split::SplitMix64;

    fn gauss(rng: &mut SplitMix64) -> f64 {
        let (u, v) = (rng.unit().max(1e-12), rng.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// `n` rows of `d` features in `k` overlapping Gaussian clusters.
    fn problem(n: usize, d: usize, k: usize, seed: u64) -> (Vec<f64>, Vec<usize>) {
        let mut rng = SplitMix64::new(seed);
        let centres: Vec<Vec<f64>> = (0..k)
            .map(|_| (0..d).map(|_| gauss(&mut rng)).collect())
            .collect();
        let y: Vec<usize> = (0..n).map(|i| i % k).collect();
        let x = y
            .iter()
            .flat_map(|&c| {
                centres[c]
                    .iter()
                    .map(|m| 0.5 * m + gauss(&mut rng))
                    .collect::<Vec<_>>()
            })
            .collect();
        (x, y)
    }

    /// The analytic gradient matches central finite differences, for both losses.
    #[test]
    fn gradient_matches_finite_differences() {
        let (d, n, k) = (4, 9, 3);
        let (x, y) = problem(n, d, k, 1);
        let sw: Vec<f64> = (0..n).map(|i| 0.5 + (i % 3) as f64 * 0.4).collect();
        let t: Vec<f64> = (0..n * k)
            .map(|v| f64::from(u8::from(v % 4 == 1)))
            .collect();
        let pw = [1.0, 2.5, 0.7];
        for targets in [
            Targets::Softmax { classes: &y, k },
            Targets::Sigmoid {
                t: &t,
                k,
                pos_weight: &pw,
                shared: false,
            },
            Targets::Sigmoid {
                t: &t,
                k,
                pos_weight: &pw,
                shared: true,
            },
        ] {
            let mut rng = SplitMix64::new(2);
            let dim = d * targets.weight_columns() + k;
            let p: Vec<f64> = (0..dim).map(|_| 0.3 * gauss(&mut rng)).collect();
            let mut g = vec![0.0; p.len()];
            objective(&x, d, targets, &sw, 0.3, &p, &mut g);
            let mut scratch = vec![0.0; p.len()];
            for j in 0..p.len() {
                let h = 1e-6;
                let (mut a, mut b) = (p.clone(), p.clone());
                a[j] += h;
                b[j] -= h;
                let fd = (objective(&x, d, targets, &sw, 0.3, &a, &mut scratch)
                    - objective(&x, d, targets, &sw, 0.3, &b, &mut scratch))
                    / (2.0 * h);
                assert!((fd - g[j]).abs() < 1e-7, "param {j}: {fd} vs {}", g[j]);
            }
        }
    }

    /// Binary logistic regression with one feature has a known optimum: at it, the weighted
    /// residuals sum to zero and balance the penalty (the stationarity conditions), and the
    /// solver reaches it to its tolerance.
    #[test]
    fn reaches_the_optimum_of_a_tiny_problem() {
        // Without a penalty and with one feature that separates nothing on average, the
        // optimum of a softmax over 2 classes is known in closed form: with x ∈ {−1, +1}
        // and class-1 shares q₋ and q₊, the logit difference at x is log(q/(1−q)).
        let x = [-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0];
        let y = [0, 0, 0, 1, 0, 1, 1, 1];
        let sw = [1.0; 8];
        let fit = minimise(
            &x,
            1,
            Targets::Softmax { classes: &y, k: 2 },
            &sw,
            0.0,
            None,
            Tolerance::default(),
        );
        assert!(fit.grad_max <= 1e-6, "{fit:?}");
        let diff = |v: f64| {
            let z = fit.logits(&[v]);
            z[1] - z[0]
        };
        assert!((diff(-1.0) - (1.0_f64 / 3.0).ln()).abs() < 1e-5, "{fit:?}");
        assert!((diff(1.0) - 3.0_f64.ln()).abs() < 1e-5, "{fit:?}");
    }

    /// Solving in the rows' span gives the weights of the full problem (fewer rows than
    /// features, one duplicated row so the Gram matrix is singular).
    #[test]
    fn span_solution_equals_the_full_solution() {
        let (d, n, k) = (40, 12, 3);
        let (mut x, mut y) = problem(n, d, k, 4);
        x.extend_from_within(..d);
        y.push(y[0]);
        let n = n + 1;
        let sw: Vec<f64> = (0..n).map(|i| 1.0 + (y[i] as f64) * 0.5).collect();
        let tol = Tolerance {
            grad_max: 1e-10,
            max_iterations: 5000,
        };
        let targets = Targets::Softmax { classes: &y, k };
        let full = minimise(&x, d, targets, &sw, 0.05, None, tol);
        let design = Design::new(x.clone(), n, d);
        assert!(
            design.span.as_ref().unwrap().1 < n,
            "duplicate row: rank below n"
        );
        let span = design.fit(targets, &sw, 0.05, None, tol);
        let max_diff = full
            .weight
            .iter()
            .zip(&span.weight)
            .chain(full.bias.iter().zip(&span.bias))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(max_diff < 1e-6, "{max_diff}");
        assert!((full.objective - span.objective).abs() < 1e-9);
        // A warm start from the solution stops at once.
        let again = design.fit(targets, &sw, 0.05, Some(&span), tol);
        assert!(again.iterations <= 2, "{}", again.iterations);
    }

    /// The span's columns shrink by orders of magnitude; the diagonal starting inverse Hessian
    /// reaches the same optimum in fewer steps than plain L-BFGS on the same rows.
    #[test]
    fn scaled_start_reaches_the_same_optimum_in_fewer_steps() {
        let (d, n, k) = (120, 60, 4);
        let (mut x, y) = problem(n, d, k, 11);
        // Blocks of features on very different scales, as multi-scale parts are.
        for row in x.chunks_mut(d) {
            row[..20].iter_mut().for_each(|v| *v *= 8.0);
        }
        let sw = vec![1.0; n];
        let targets = Targets::Softmax { classes: &y, k };
        let design = Design::new(x, n, d);
        let (z, r) = design.span.clone().unwrap();
        for l2 in [1.0, 1e-2] {
            let tol = Tolerance::default();
            let plain = minimise(&z, r, targets, &sw, l2, None, tol);
            let scaled = design.fit(targets, &sw, l2, None, tol);
            assert!(scaled.grad_max <= tol.grad_max, "{}", scaled.grad_max);
            assert!(
                scaled.objective <= plain.objective + 1e-9,
                "{} vs {} ({} vs {} steps)",
                scaled.objective,
                plain.objective,
                scaled.iterations,
                plain.iterations
            );
            assert!(
                scaled.iterations < plain.iterations,
                "λ {l2}: {} vs {} steps",
                scaled.iterations,
                plain.iterations
            );
        }
    }

    /// Ordered thresholds with shared weights: on any input, however extreme, the
    /// probability of exceeding threshold `j` never rises with `j`.
    #[test]
    fn shared_thresholds_are_rank_consistent() {
        let (d, n, k) = (6, 90, 4);
        let mut rng = SplitMix64::new(9);
        let w_true: Vec<f64> = (0..d).map(|_| gauss(&mut rng)).collect();
        let mut x = Vec::new();
        let mut t = Vec::new();
        for _ in 0..n {
            let row: Vec<f64> = (0..d).map(|_| gauss(&mut rng)).collect();
            let score: f64 =
                row.iter().zip(&w_true).map(|(a, b)| a * b).sum::<f64>() + 0.5 * gauss(&mut rng);
            let grade = [-1.0, 0.0, 1.0, 2.0].iter().filter(|&&c| score > c).count();
            t.extend((0..k).map(|j| f64::from(u8::from(grade > j))));
            x.extend(row);
        }
        let targets = Targets::Sigmoid {
            t: &t,
            k,
            pos_weight: &[1.0; 4],
            shared: true,
        };
        let mut fit =
            Design::new(x, n, d).fit(targets, &[1.0; 90], 1e-3, None, Tolerance::default());
        assert_eq!(fit.columns, 1);
        assert_eq!(fit.weight.len(), d);
        // The optimum already orders the thresholds.
        assert!(fit.bias.windows(2).all(|b| b[1] <= b[0]), "{:?}", fit.bias);
        fit.order_biases();
        let rows = fit.weight_rows();
        assert!(
            rows.iter()
                .all(|r| r.len() == k && r.iter().all(|&v| v == r[0]))
        );
        for trial in 0..2000 {
            let scale = [0.1, 1.0, 10.0, 1e3][trial % 4];
            let input: Vec<f64> = (0..d).map(|_| scale * gauss(&mut rng)).collect();
            let p: Vec<f64> = fit.logits(&input).into_iter().map(sigmoid).collect();
            assert!(p.windows(2).all(|q| q[1] <= q[0]), "{p:?}");
        }
    }

    /// A stronger penalty gives smaller weights.
    #[test]
    fn stronger_penalty_smaller_weights() {
        let (x, y) = problem(60, 20, 3, 7);
        let design = Design::new(x, 60, 20);
        let norms: Vec<f64> = [1e-4, 1e-2, 1.0]
            .iter()
            .map(|&l2| {
                let f = design.fit(
                    Targets::Softmax { classes: &y, k: 3 },
                    &[1.0; 60],
                    l2,
                    None,
                    Tolerance::default(),
                );
                f.weight.iter().map(|w| w * w).sum::<f64>().sqrt()
            })
            .collect();
        assert!(norms[0] > norms[1] && norms[1] > norms[2], "{norms:?}");
    }
}
