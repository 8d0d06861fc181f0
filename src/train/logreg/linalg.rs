//! The dense linear algebra of solving in the rows' span: the pivoted Cholesky factor of a
//! Gram matrix, the Gram matrix of a factor's columns, and symmetric positive definite solves.

/// `ZᵀZ` of an `n × r` matrix.
pub(super) fn gram_of_columns(z: &[f64], n: usize, r: usize) -> Vec<f64> {
    let mut m = vec![0.0; r * r];
    for i in 0..n {
        let row = &z[i * r..(i + 1) * r];
        for a in 0..r {
            for b in 0..=a {
                m[a * r + b] += row[a] * row[b];
            }
        }
    }
    for a in 0..r {
        for b in 0..a {
            m[b * r + a] = m[a * r + b];
        }
    }
    m
}

/// Solves `M X = B` for a symmetric positive definite `M` (`r × r`), `B` `r × k`.
pub(super) fn solve_spd(m: &[f64], r: usize, b: &[f64], k: usize) -> Vec<f64> {
    // Cholesky M = L Lᵀ.
    let mut l = vec![0.0; r * r];
    for i in 0..r {
        for j in 0..=i {
            let mut s = m[i * r + j];
            for p in 0..j {
                s -= l[i * r + p] * l[j * r + p];
            }
            l[i * r + j] = if i == j {
                s.max(1e-300).sqrt()
            } else {
                s / l[j * r + j]
            };
        }
    }
    let mut x = b.to_vec();
    for c in 0..k {
        // L y = b
        for i in 0..r {
            let mut s = x[i * k + c];
            for p in 0..i {
                s -= l[i * r + p] * x[p * k + c];
            }
            x[i * k + c] = s / l[i * r + i];
        }
        // Lᵀ x = y
        for i in (0..r).rev() {
            let mut s = x[i * k + c];
            for p in i + 1..r {
                s -= l[p * r + i] * x[p * k + c];
            }
            x[i * k + c] = s / l[i * r + i];
        }
    }
    x
}

/// `Z` (`n × r`, rows in the original order) with `Z Zᵀ = G` for a positive semi-definite
/// `G` (`n × n`), `r` its numerical rank: Cholesky with diagonal pivoting, stopped when the
/// largest remaining diagonal is below `1e-10` of the largest.
pub(super) fn pivoted_cholesky(g: &[f64], n: usize) -> (Vec<f64>, usize) {
    let mut diag: Vec<f64> = (0..n).map(|i| g[i * n + i]).collect();
    let top = diag.iter().copied().fold(0.0, f64::max);
    let mut remaining: Vec<usize> = (0..n).collect();
    // Columns of L, each of length n.
    let mut cols: Vec<Vec<f64>> = Vec::new();
    while !remaining.is_empty() {
        let (at, &p) = remaining
            .iter()
            .enumerate()
            .max_by(|a, b| diag[*a.1].total_cmp(&diag[*b.1]))
            .expect("non-empty");
        if diag[p] <= 1e-10 * top || diag[p] <= 0.0 {
            break;
        }
        remaining.swap_remove(at);
        let pivot = diag[p].sqrt();
        let mut col = vec![0.0; n];
        col[p] = pivot;
        for &i in &remaining {
            let mut s = g[i * n + p];
            for c in &cols {
                s -= c[i] * c[p];
            }
            col[i] = s / pivot;
            diag[i] -= col[i] * col[i];
        }
        cols.push(col);
    }
    let r = cols.len().max(1);
    let mut z = vec![0.0; n * r];
    for (j, c) in cols.iter().enumerate() {
        for i in 0..n {
            z[i * r + j] = c[i];
        }
    }
    (z, r)
}
