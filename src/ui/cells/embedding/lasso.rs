//! Lasso selection on the map.

use eframe::egui;

/// The points (by index) inside the closed polygon `lasso` (the even-odd rule: a ray from
/// the point crosses the outline an odd number of times).
pub(super) fn lasso_pick(lasso: &[egui::Pos2], points: &[egui::Pos2]) -> Vec<usize> {
    if lasso.len() < 3 {
        return Vec::new();
    }
    let bounds = egui::Rect::from_points(lasso);
    let inside = |p: egui::Pos2| {
        if !bounds.contains(p) {
            return false;
        }
        let mut odd = false;
        let mut j = lasso.len() - 1;
        for i in 0..lasso.len() {
            let (a, b) = (lasso[i], lasso[j]);
            if (a.y > p.y) != (b.y > p.y) && p.x < (b.x - a.x) * (p.y - a.y) / (b.y - a.y) + a.x {
                odd = !odd;
            }
            j = i;
        }
        odd
    };
    points
        .iter()
        .enumerate()
        .filter(|(_, p)| inside(**p))
        .map(|(k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An L-shaped lasso picks the points in the L, not those in the notch of its bounding
    /// box; fewer than three corners pick nothing.
    #[test]
    fn a_lasso_picks_what_it_encloses() {
        let p = egui::pos2;
        let l = [
            p(0.0, 0.0),
            p(10.0, 0.0),
            p(10.0, 4.0),
            p(4.0, 4.0),
            p(4.0, 10.0),
            p(0.0, 10.0),
        ];
        let points = [
            p(2.0, 2.0),
            p(8.0, 2.0),
            p(2.0, 8.0),
            p(8.0, 8.0),
            p(20.0, 1.0),
        ];
        assert_eq!(lasso_pick(&l, &points), vec![0, 1, 2]);
        assert!(lasso_pick(&l[..2], &points).is_empty());
    }
}
