"""The text the commands print: results (plain dicts) as lines and tables. No NumPy at import."""

from __future__ import annotations

import math

from .monitor import Monitor


def pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _monitored(metric: str, value) -> str:
    return Monitor(metric).format(value)


def final_line(s: dict) -> str:
    """The line a finished run ends with; it names the monitored metric once (and why, when it fell back)."""
    metric = s["monitor"]
    fallback = " (no validation split)" if s.get("monitor_requested", metric) != metric else ""
    return (f"{s['name']}: test accuracy {pct(s['test_accuracy'])} (loss {s['test_loss']:.4f}), "
            f"best {metric} {_monitored(metric, s['best_monitor_value'])} at epoch {s['best_epoch']}{fallback}, "
            f"{s['epochs']} epochs in {s['train_seconds']:.1f} s ({s['images_per_second']:,.0f} images/s); "
            f"run directory {s['run_dir']}")


def eval_lines(result: dict, split: str) -> list[str]:
    lines = [f"{result['checkpoint']} (epoch {result['epoch']}) on {split}: {result['n']} images",
             f"loss {result['loss']:.4f}  accuracy {pct(result['accuracy'])}", "per-class accuracy:"]
    lines += [f"  {name:>12}  {pct(acc)}" for name, acc in result["per_class_accuracy"].items()]
    classes = result["classes"]
    width = max(5, max(len(str(c)) for c in classes) + 1)
    lines.append("confusion matrix (rows: true class, columns: predicted):")
    lines.append(" " * width + "".join(f"{str(c)[:width - 1]:>{width}}" for c in classes))
    lines += [f"{str(c)[:width - 1]:>{width}}" + "".join(f"{v:>{width}}" for v in row)
              for c, row in zip(classes, result["confusion_matrix"])]
    return lines


def summary_lines(s: dict) -> list[str]:
    """The network as a table: layer, type, output shape, parameters, multiply-adds, and totals."""
    shape = lambda dims: str(tuple(dims))  # noqa: E731
    header = ("layer", "type", "output shape", "params", "MACs")
    rows = [("input", "", shape(s["input_shape"]), "", "")]
    rows += [(r["name"], r["type"], shape(r["output_shape"]), f"{r['params']:,}", f"{r['macs']:,}") for r in s["layers"]]
    rows.append(("total", "", shape(s["totals"]["output_shape"]), f"{s['totals']['params']:,}",
                 f"{s['totals']['macs']:,}"))
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(5)]
    line = lambda row: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    rule = "  ".join("-" * w for w in widths)
    return ([f"{s['name']}: {len(s['layers'])} layers, multiply-adds per image", line(header), rule]
            + [line(row) for row in rows[:-1]] + [rule, line(rows[-1])])


def bench_lines(r: dict) -> list[str]:
    lines = [f"{r['name']}: batch {r['batch_size']} ({r['steps']} timed steps after warm-up), inference batch "
             f"{r['eval_batch_size']}; {r['workers']} process{'es' if r['workers'] > 1 else ''} with "
             f"{r['blas_threads']} BLAS thread{'s' if r['blas_threads'] != 1 else ''} each; {r['data']}",
             f"train:     {r['train_images_per_s']:>9,.0f} images/s  {r['train_step_ms']:8.2f} ms/step  "
             f"{r['train_gflops']:6.1f} GFLOP/s  {100 * r['train_ceiling_share']:4.0f}% of NumPy's GEMM",
             f"inference: {r['infer_images_per_s']:>9,.0f} images/s  {'':16}  {r['infer_gflops']:6.1f} GFLOP/s  "
             f"{100 * r['infer_ceiling_share']:4.0f}% of NumPy's GEMM",
             f"BLAS: {r['blas']}", *([f"hint: {r['blas_hint']}"] if r.get("blas_hint") else []),
             f"NumPy float32 GEMM here: {r['gemm_gflops']:.0f} GFLOP/s; peak memory {r['train_peak_memory_mb']:.0f} MiB "
             f"training, {r['peak_memory_mb']:.0f} MiB with inference"]
    if r["layers"]:
        lines.append("profile (separate, instrumented steps):")
        lines.append(f"{'layer':<10}{'type':<16}{'forward ms':>11}{'backward ms':>13}{'share':>8}")
        lines += [f"{row['name']:<10}{row['type']:<16}{row['forward_ms']:>11.2f}{row['backward_ms']:>13.2f}"
                  f"{100 * row['share']:>7.1f}%" for row in r["layers"]]
        lines.append(f"{'loss, optimizer, overhead':<26}{r['other_ms']:>11.2f} ms")
    return lines


def compare_lines(rows: list[dict]) -> list[str]:
    """One row per run: the best value of the metric it monitored and when, then final figures."""
    width = max(len("run"), *(len(r["label"]) for r in rows))
    mwidth = max(len("monitor"), *(len(r["monitor"]) for r in rows))
    lines = [f"{'run':<{width}}  {'monitor':<{mwidth}}  {'best':>8}  {'at epoch':>8}  {'final train loss':>16}  "
             f"{'test acc':>8}  {'epochs':>6}  {'time (s)':>8}  {'images/s':>9}"]
    for r in rows:
        ips = "-" if r["images_per_s"] is None else f"{r['images_per_s']:,.0f}"
        lines.append(f"{r['label']:<{width}}  {r['monitor']:<{mwidth}}  {_monitored(r['monitor_metric'], r['best']):>8}  "
                     f"{r['best_epoch'] or '-':>8}  {r['final_train_loss']:>16.4f}  {pct(r['test_acc']):>8}  "
                     f"{r['epochs']:>6}  {r['train_seconds']:>8.1f}  {ips:>9}")
    return lines


def spread_text(metric: str, mean, std) -> str:
    """'98.44 ± 0.12%' for an accuracy, '0.0412 ± 0.0011' for a loss; no ± without a std, '-' without a mean."""
    if mean is None:
        return "-"
    if metric.endswith("acc"):
        return f"{100 * mean:.2f}%" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}%"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def group_lines(rows: list[dict]) -> list[str]:
    """One row per group of runs, best first: its size, the monitored metric's best value as mean ± std
    over the runs, the mean epoch of that best, and the test accuracy's mean ± std."""
    cells = [(r["label"], str(r["n"]), r["monitor"], spread_text(r["monitor_metric"], r["mean"], r["std"]),
              "-" if r["best_epoch"] is None else f"{r['best_epoch']:.1f}",
              "-" if r["test_acc"] is None else spread_text("test_acc", r["test_acc"]["mean"], r["test_acc"]["std"]))
             for r in rows]
    header = ("group", "n", "monitor", "best (mean ± std)", "at epoch (mean)", "test acc (mean ± std)")
    widths = [max(len(row[i]) for row in cells + [header]) for i in range(len(header))]
    line = lambda row: "  ".join(c.ljust(w) if i in (0, 2) else c.rjust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(row, widths)))
    return [line(header)] + [line(row) for row in cells]
