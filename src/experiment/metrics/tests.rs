use super::*;
use serde_json::Value;

const FIXTURE: &str = include_str!("../../../tests/fixtures/metrics/sklearn.json");
const TOL: f64 = 1e-9;

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= TOL,
        "{what}: got {actual}, expected {expected} (diff {})",
        (actual - expected).abs()
    );
}

fn close_opt(actual: Option<f64>, expected: Option<f64>, what: &str) {
    match (actual, expected) {
        (Some(a), Some(e)) => close(a, e, what),
        (None, None) => {}
        _ => panic!("{what}: got {actual:?}, expected {expected:?}"),
    }
}

/// One-hot-ish probability rows that predict `pred[i]`.
fn probs_predicting(pred: &[usize], k: usize) -> Vec<Vec<f32>> {
    pred.iter()
        .map(|&p| {
            (0..k)
                .map(|c| if c == p { 0.8 } else { 0.2 / (k - 1) as f32 })
                .collect()
        })
        .collect()
}

#[test]
fn binary_two_by_two_by_hand() {
    // truth: 1 1 1 0 0 0 0 0 ; pred: 1 1 0 1 0 0 0 0
    // counts[true][pred] = [[4, 1], [1, 2]]
    // class 1: TP 2, FP 1, FN 1 -> P = 2/3, R = 2/3, F1 = 4/6 = 2/3, support 3
    // class 0: TP 4, FP 1, FN 1 -> P = 4/5, R = 4/5, F1 = 8/10 = 0.8, support 5
    // accuracy = 6/8; balanced = (0.8 + 2/3) / 2 = 11/15
    // macro P = (0.8 + 2/3) / 2 = 11/15; weighted P = (5·0.8 + 3·2/3) / 8 = 6/8
    let truth = [1, 1, 1, 0, 0, 0, 0, 0];
    let scores = [0.9f32, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05];
    let probs: Vec<Vec<f32>> = scores.iter().map(|&s| vec![1.0 - s, s]).collect();
    let m = evaluate_single(Task::Binary, &names(&["neg", "pos"]), &truth, &probs);
    assert_eq!(m.n, 8);
    assert_eq!(
        m.confusion.as_ref().unwrap().counts,
        vec![vec![4, 1], vec![1, 2]]
    );
    close(m.accuracy, 0.75, "accuracy");
    close(m.balanced_accuracy, 11.0 / 15.0, "balanced");
    close(m.classes[1].precision, 2.0 / 3.0, "P1");
    close(m.classes[1].recall, 2.0 / 3.0, "R1");
    close(m.classes[1].f1, 2.0 / 3.0, "F1_1");
    close(m.classes[0].f1, 0.8, "F1_0");
    assert_eq!((m.classes[0].support, m.classes[1].support), (5, 3));
    close(m.macro_precision, 11.0 / 15.0, "macro P");
    close(m.weighted_precision, 0.75, "weighted P");
    // AUC of class 1: positives score 0.9, 0.8, 0.3; negatives 0.7, 0.2, 0.1, 0.4, 0.05.
    // pairs won: 0.9 -> 5, 0.8 -> 5, 0.3 -> 3 (0.2, 0.1, 0.05) = 13 of 15.
    close_opt(m.macro_auc, Some(13.0 / 15.0), "auc");
    close_opt(m.classes[0].auc, Some(13.0 / 15.0), "auc class 0");
    assert_eq!(m.kappa_quadratic, None);
    assert_eq!(m.hamming_loss, None);
    let norm = m.confusion.unwrap().row_normalised();
    assert_eq!(norm, vec![vec![0.8, 0.2], vec![1.0 / 3.0, 2.0 / 3.0]]);
}

#[test]
fn tiny_three_class_by_hand() {
    // Same data as the fixture's "tiny" case.
    // truth 0 0 1 1 2 2, pred 0 1 1 1 2 0 -> counts [[1,1,0],[0,2,0],[1,0,1]]
    // a: TP1 FP1 FN1 -> P .5 R .5 F1 .5 ; b: TP2 FP1 FN0 -> P 2/3 R 1 F1 .8
    // c: TP1 FP0 FN1 -> P 1 R .5 F1 2/3
    // macro P = (.5 + 2/3 + 1)/3 = 13/18 ; macro F1 = (.5 + .8 + 2/3)/3 = 59/90
    // AUC a: pos {.7,.3} vs neg {.2,.1,.1,.5}: .7 wins 4, .3 wins 3 -> 7/8
    let probs = vec![
        vec![0.7, 0.2, 0.1],
        vec![0.3, 0.6, 0.1],
        vec![0.2, 0.7, 0.1],
        vec![0.1, 0.8, 0.1],
        vec![0.1, 0.2, 0.7],
        vec![0.5, 0.1, 0.4],
    ];
    let m = evaluate_single(
        Task::MultiClass,
        &names(&["a", "b", "c"]),
        &[0, 0, 1, 1, 2, 2],
        &probs,
    );
    assert_eq!(
        m.confusion.as_ref().unwrap().counts,
        vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]
    );
    close(m.accuracy, 4.0 / 6.0, "accuracy");
    close(m.macro_precision, 13.0 / 18.0, "macro P");
    close(m.macro_f1, 59.0 / 90.0, "macro F1");
    close_opt(m.classes[0].auc, Some(7.0 / 8.0), "auc a");
    close_opt(
        m.macro_auc,
        Some((7.0 / 8.0 + 1.0 + 1.0) / 3.0),
        "macro auc",
    );
}

#[test]
fn zero_support_class_counts_in_macro_but_not_in_balanced_accuracy() {
    // 3 classes, class 2 never true but predicted once.
    // truth 0 0 1 1, pred 0 2 1 1 -> class 0: P 1 R .5 ; class 1: P 1 R 1 ; class 2: P 0 R 0
    // macro R = (.5 + 1 + 0)/3 = .5 ; balanced = (.5 + 1)/2 = .75
    // weighted R = (2·.5 + 2·1 + 0)/4 = .75
    let probs = probs_predicting(&[0, 2, 1, 1], 3);
    let m = evaluate_single(
        Task::MultiClass,
        &names(&["a", "b", "c"]),
        &[0, 0, 1, 1],
        &probs,
    );
    close(m.macro_recall, 0.5, "macro R");
    close(m.balanced_accuracy, 0.75, "balanced");
    close(m.weighted_recall, 0.75, "weighted R");
    assert_eq!(m.classes[2].auc, None);
    assert_eq!(m.classes[2].support, 0);
    close(m.classes[2].precision, 0.0, "P of zero-support class");
}

#[test]
fn never_predicted_class_has_zero_precision_and_f1() {
    // truth 0 1 1, pred 0 0 0 -> class 1: TP 0, never predicted -> P 0 (zero_division), F1 0.
    let probs = probs_predicting(&[0, 0, 0], 2);
    let m = evaluate_single(Task::Binary, &names(&["n", "p"]), &[0, 1, 1], &probs);
    assert_eq!(m.classes[1].precision, 0.0);
    assert_eq!(m.classes[1].f1, 0.0);
    // class 0: P 1/3, R 1, F1 = 2·1/(1+3) = 0.5
    close(m.classes[0].f1, 0.5, "F1 class 0");
}

#[test]
fn auc_extremes() {
    let pos = [false, false, true, true];
    assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &pos), Some(1.0));
    assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &pos), Some(0.0));
    assert_eq!(roc_auc(&[0.5; 4], &pos), Some(0.5));
    // one tie between a positive and a negative: 3 wins + 0.5 of 4 pairs
    assert_eq!(roc_auc(&[0.1, 0.5, 0.5, 0.9], &pos), Some(0.875));
    assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
    assert_eq!(roc_auc(&[], &[]), None);
}

#[test]
fn nan_scores_rank_lowest_and_never_panic() {
    let pos = [false, true, true];
    // NaN negative is below both positives -> AUC 1.
    assert_eq!(roc_auc(&[f32::NAN, 0.1, 0.2], &pos), Some(1.0));
    // NaN positive is below the negative, other positive above it -> 1/2.
    assert_eq!(roc_auc(&[0.5, f32::NAN, 0.9], &pos), Some(0.5));
    // All NaN -> all tied.
    assert_eq!(roc_auc(&[f32::NAN; 3], &pos), Some(0.5));
    // argmax skips NaN.
    assert_eq!(argmax(&[f32::NAN, 0.1, 0.3], 3), 2);
    assert_eq!(argmax(&[f32::NAN, f32::NAN], 2), 0);
    let m = evaluate_single(
        Task::MultiClass,
        &names(&["a", "b", "c"]),
        &[0, 1, 2],
        &[
            vec![f32::NAN, 0.2, 0.1],
            vec![0.1, f32::NAN, 0.9],
            vec![0.3],
        ],
    );
    // preds: 1, 2, 0 (short row: missing entries are NaN)
    assert_eq!(
        m.confusion.as_ref().unwrap().counts,
        vec![vec![0, 1, 0], vec![0, 0, 1], vec![1, 0, 0]]
    );
    assert_eq!(m.accuracy, 0.0);
    let back: Metrics = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    assert_eq!(back, m);
}

#[test]
fn argmax_ties_go_to_lowest_index() {
    assert_eq!(argmax(&[0.4, 0.4, 0.2], 3), 0);
    assert_eq!(argmax(&[0.2, 0.4, 0.4], 3), 1);
    assert_eq!(
        argmax(&[0.1, 0.2, 0.9], 2),
        1,
        "entries past n_classes are ignored"
    );
}

#[test]
fn roc_curve_by_hand() {
    // scores .9(+) .5(+) .5(-) .1(-): thresholds .9, .5, .1
    // -> (0,0), (0,.5), (.5,1), (1,1)
    let pts = roc_curve(&[0.9, 0.5, 0.5, 0.1], &[true, true, false, false]);
    assert_eq!(pts, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
    assert!(roc_curve(&[0.1, 0.2], &[false, false]).is_empty());
}

#[test]
fn kappa_by_hand() {
    // Identical ratings with several classes -> 1.
    assert_eq!(quadratic_kappa(&[0, 1, 2, 3], &[0, 1, 2, 3], 4), 1.0);
    // truth 0 1, pred 1 0, K = 2: O = [[0,1],[1,0]], marginals (1,1) -> E = .5 everywhere.
    // Σ w·O = 2, Σ w·E = 1 -> kappa = 1 - 2 = -1.
    assert_eq!(quadratic_kappa(&[0, 1], &[1, 0], 2), -1.0);
    // truth 0 0 2 2, pred 0 1 2 2, K = 3: Σ w·O = 1 (0->1).
    // truth marginal (2,0,2), pred marginal (1,1,2), n 4:
    // Σ w·E = [2·1·1 (0->1) + 2·2·4 (0->2) + 2·1·4 (2->0) + 2·1·1 (2->1)] / 4 = 28/4 = 7
    // kappa = 1 - 1/7 = 6/7
    close(
        quadratic_kappa(&[0, 0, 2, 2], &[0, 1, 2, 2], 3),
        6.0 / 7.0,
        "kappa",
    );
    // Undefined like sklearn: empty, or one class only.
    assert!(quadratic_kappa(&[], &[], 5).is_nan());
    assert!(quadratic_kappa(&[2, 2], &[2, 2], 5).is_nan());
    // Out-of-range pairs are ignored.
    assert_eq!(quadratic_kappa(&[0, 1, 9], &[0, 1, 0], 2), 1.0);
}

#[test]
fn ordinal_reports_kappa_and_none_when_undefined() {
    let probs = probs_predicting(&[0, 1, 2, 2], 3);
    let m = evaluate_single(
        Task::Ordinal,
        &names(&["0", "1", "2"]),
        &[0, 1, 2, 1],
        &probs,
    );
    let expected = quadratic_kappa(&[0, 1, 2, 1], &[0, 1, 2, 2], 3);
    assert_eq!(m.kappa_quadratic, Some(expected));
    let single = evaluate_single(
        Task::Ordinal,
        &names(&["0", "1"]),
        &[1, 1],
        &probs_predicting(&[1, 1], 2),
    );
    assert_eq!(single.kappa_quadratic, None);
}

#[test]
fn multi_label_by_hand() {
    // 2 labels, threshold .5 (>=):
    // truth [1,0] [1,1] [0,0] ; probs [.9,.5] [.4,.7] [.1,.2] -> pred [1,1] [0,1] [0,0]
    // exact matches: sample 3 only -> subset accuracy 1/3
    // wrong decisions: (1,b) (2,a) -> hamming 2/6
    // label a: TP1 FP0 FN1 TN1 -> P 1 R .5 F1 2/3; balanced (.5 + 1)/2 = .75
    // label b: TP1 FP1 FN0 TN1 -> P .5 R 1 F1 2/3; balanced (1 + .5)/2 = .75
    let truth = vec![vec![true, false], vec![true, true], vec![false, false]];
    let probs = vec![vec![0.9, 0.5], vec![0.4, 0.7], vec![0.1, 0.2]];
    let m = evaluate_multi_label(&names(&["a", "b"]), &truth, &probs, 0.5);
    assert_eq!(m.task, Task::MultiLabel);
    close(m.accuracy, 1.0 / 3.0, "subset accuracy");
    close_opt(m.hamming_loss, Some(2.0 / 6.0), "hamming");
    close(m.classes[0].recall, 0.5, "R a");
    close(m.classes[1].precision, 0.5, "P b");
    close(m.macro_f1, 2.0 / 3.0, "macro F1");
    close(m.balanced_accuracy, 0.75, "balanced");
    // AUC a: pos {.9,.4} vs neg {.1} -> 1 ; AUC b: pos {.7} vs neg {.5,.2} -> 1
    close_opt(m.macro_auc, Some(1.0), "macro auc");
    assert!(m.confusion.is_none());
}

#[test]
fn empty_inputs_give_zero_metrics() {
    let labels = names(&["a", "b"]);
    let m = evaluate_single(Task::Ordinal, &labels, &[], &[]);
    assert_eq!(
        (m.n, m.accuracy, m.macro_auc, m.kappa_quadratic),
        (0, 0.0, None, None)
    );
    assert_eq!(m.classes.len(), 2);
    assert_eq!(
        m.confusion.as_ref().unwrap().row_normalised(),
        vec![vec![0.0; 2]; 2]
    );
    let m = evaluate_multi_label(&labels, &[], &[], 0.5);
    assert_eq!(
        (m.n, m.hamming_loss, m.confusion.is_none()),
        (0, None, true)
    );
    let m = evaluate_single(Task::MultiClass, &[], &[0, 1], &[vec![0.5], vec![0.5]]);
    assert_eq!(m.n, 0);
    assert_eq!(
        aggregate_by_patient(&[], &[], &[]),
        (vec![], vec![], vec![])
    );
}

#[test]
fn aggregate_by_patient_by_hand() {
    // p2: cells truth 1, 0 (tie -> 0), probs mean ([.2,.8] + [.6,.4]) / 2 = [.4,.6]
    // p1: cells truth 1, 1, 0 -> 1, probs mean of [1,0],[0,1],[.5,.5] = [.5,.5]
    let patients = ["p2", "p1", "p1", "p2", "p1"];
    let truth = [1, 1, 1, 0, 0];
    let probs = vec![
        vec![0.2, 0.8],
        vec![1.0, 0.0],
        vec![0.0, 1.0],
        vec![0.6, 0.4],
        vec![0.5, 0.5],
    ];
    let (ids, t, p) = aggregate_by_patient(&patients, &truth, &probs);
    assert_eq!(ids, vec!["p1".to_string(), "p2".to_string()]);
    assert_eq!(t, vec![1, 0]);
    assert_eq!(p, vec![vec![0.5, 0.5], vec![0.4, 0.6]]);
}

#[test]
fn metrics_json_round_trip() {
    let probs = probs_predicting(&[0, 1, 1], 2);
    let m = evaluate_single(Task::Binary, &names(&["n", "p"]), &[0, 1, 0], &probs);
    let json = serde_json::to_string(&m).unwrap();
    assert!(json.contains("\"task\":\"binary\""));
    assert_eq!(serde_json::from_str::<Metrics>(&json).unwrap(), m);
    assert_eq!(
        serde_json::to_string(&Task::MultiLabel).unwrap(),
        "\"multi-label\""
    );
}

// ---- scikit-learn fixture ----

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn opt_f(v: &Value) -> Option<f64> {
    if v.is_null() { None } else { Some(f(v)) }
}

fn f32_rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| f(x) as f32).collect())
        .collect()
}

fn check_against(m: &Metrics, exp: &Value, case: &str) {
    let at = |key: &str| format!("{case}: {key}");
    let e = |key: &str| {
        exp.get(key)
            .unwrap_or_else(|| panic!("fixture lacks {}", at(key)))
    };
    close(m.accuracy, f(e("accuracy")), &at("accuracy"));
    close(
        m.balanced_accuracy,
        f(e("balanced_accuracy")),
        &at("balanced_accuracy"),
    );
    for (key, value) in [
        ("macro_precision", m.macro_precision),
        ("macro_recall", m.macro_recall),
        ("macro_f1", m.macro_f1),
        ("weighted_precision", m.weighted_precision),
        ("weighted_recall", m.weighted_recall),
        ("weighted_f1", m.weighted_f1),
    ] {
        close(value, f(e(key)), &at(key));
    }
    let k = m.classes.len();
    for key in ["precision", "recall", "f1", "support", "auc"] {
        assert_eq!(e(key).as_array().unwrap().len(), k, "{}", at(key));
    }
    for (c, cm) in m.classes.iter().enumerate() {
        close(
            cm.precision,
            f(&e("precision")[c]),
            &at(&format!("precision[{c}]")),
        );
        close(cm.recall, f(&e("recall")[c]), &at(&format!("recall[{c}]")));
        close(cm.f1, f(&e("f1")[c]), &at(&format!("f1[{c}]")));
        assert_eq!(
            Some(cm.support),
            e("support")[c].as_u64(),
            "{}",
            at(&format!("support[{c}]"))
        );
        close_opt(cm.auc, opt_f(&e("auc")[c]), &at(&format!("auc[{c}]")));
    }
    close_opt(m.macro_auc, opt_f(e("macro_auc")), &at("macro_auc"));
    close_opt(
        m.kappa_quadratic,
        opt_f(e("kappa_quadratic")),
        &at("kappa_quadratic"),
    );
    close_opt(m.kappa, opt_f(e("kappa")), &at("kappa"));
    close_opt(
        m.hamming_loss,
        opt_f(e("hamming_loss")),
        &at("hamming_loss"),
    );
    let expected_confusion: Option<Vec<Vec<u64>>> =
        serde_json::from_value(e("confusion").clone()).unwrap();
    assert_eq!(
        m.confusion.as_ref().map(|c| c.counts.clone()),
        expected_confusion,
        "{}",
        at("confusion")
    );
}

#[test]
fn matches_sklearn_fixture() {
    let doc: Value = serde_json::from_str(FIXTURE).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 6, "fixture has {} cases", cases.len());
    let mut roc_checked = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let task: Task = serde_json::from_value(case["task"].clone()).unwrap();
        let labels: Vec<String> = serde_json::from_value(case["labels"].clone()).unwrap();
        let probs = f32_rows(&case["probs"]);
        let exp = &case["expected"];
        let m = if task == Task::MultiLabel {
            let truth: Vec<Vec<bool>> = serde_json::from_value(case["truth"].clone()).unwrap();
            let threshold = f(&case["threshold"]) as f32;
            evaluate_multi_label(&labels, &truth, &probs, threshold)
        } else {
            let truth: Vec<usize> = serde_json::from_value(case["truth"].clone()).unwrap();
            if let Some(points) = exp.get("roc_curve") {
                let scores: Vec<f32> = probs.iter().map(|p| p[1]).collect();
                let positives: Vec<bool> = truth.iter().map(|&t| t == 1).collect();
                let ours = roc_curve(&scores, &positives);
                let theirs = points.as_array().unwrap();
                assert_eq!(ours.len(), theirs.len(), "{name}: roc_curve length");
                for (i, (&(fpr, tpr), pt)) in ours.iter().zip(theirs).enumerate() {
                    close(fpr, f(&pt[0]), &format!("{name}: fpr[{i}]"));
                    close(tpr, f(&pt[1]), &format!("{name}: tpr[{i}]"));
                }
                roc_checked += 1;
            }
            evaluate_single(task, &labels, &truth, &probs)
        };
        assert_eq!(m.task, task, "{name}");
        assert_eq!(m.n as usize, probs.len(), "{name}");
        check_against(&m, exp, name);
    }
    assert_eq!(roc_checked, 1);

    let kappas = doc["kappa_cases"].as_array().unwrap();
    assert!(!kappas.is_empty());
    for (i, kc) in kappas.iter().enumerate() {
        let truth: Vec<usize> = serde_json::from_value(kc["truth"].clone()).unwrap();
        let pred: Vec<usize> = serde_json::from_value(kc["pred"].clone()).unwrap();
        let k = kc["n_classes"].as_u64().unwrap() as usize;
        close(
            quadratic_kappa(&truth, &pred, k),
            f(&kc["kappa_quadratic"]),
            &format!("kappa_cases[{i}]"),
        );
        close(
            cohen_kappa(&truth, &pred, k),
            f(&kc["kappa"]),
            &format!("kappa_cases[{i}] (unweighted)"),
        );
    }
}
