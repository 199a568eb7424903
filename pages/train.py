"""Train: configure and launch detached runs; watch, stop, resume and delete them."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from bdcore.viz.figures import training_curves_fig
from bdcore.progress import format_eta
from bdcore.data.catalog import describe_label_problems, label_problems, tiles_with_bad_labels
from bdcore.data.products import DEFAULT_PRODUCT, PRODUCT_BANDS
from bdcore.engine.config import ARCH_NAMES, ENCODER_CHOICES
from bdcore.engine.queue import gpu_count
from bdcore.engine.rundir import read_metrics
from appkit import USER_ERRORS, current_root, get_catalog, rerun_fragment, root_label, through_app_navigation

CROPS = [64, 128, 256, 384, 512, "full tile"]

through_app_navigation()
st.title("Train")


@st.cache_resource(show_spinner=False)
def device_info() -> tuple[bool, str]:
    import torch

    if torch.cuda.is_available():
        return True, f"{torch.cuda.get_device_name(0)} (CUDA, {torch.cuda.device_count()} GPU)"
    return False, "CPU"


root = current_root()
catalog = get_catalog(root)
has_gpu, device_name = device_info()


@st.cache_data(ttl=60, show_spinner=False)
def weights_outlook(encoder: str, weights: str | None) -> tuple[bool, str]:
    """Can the chosen weights be had (cached, downloadable, a local file)? Probed at most once a minute."""
    from bdcore.engine.weights import availability

    return availability(encoder, weights)


# ----------------------------------------------------------------------------------------------- the run form
st.markdown(f"**New run** on {root_label(root)} ({len(catalog):,} tiles)")
bad_labels = label_problems(catalog)
EXCLUDE_LABEL = "Leave out tiles with bad labels"
if bad_labels:
    st.warning(f"{len(bad_labels)} labels file(s) of this dataset cannot be used for training: "
               f"{describe_label_problems(bad_labels)}. A run whose train/val tiles include one is refused: fix the "
               f"files, or tick **{EXCLUDE_LABEL}** below.")
# The model row sits outside the form so that the weights check below updates before Start is pressed.
c = st.columns(4)
arch = c[0].selectbox("Architecture", ARCH_NAMES, key="f_arch")
encoder = c[1].selectbox("Encoder", ENCODER_CHOICES, index=1, key="f_encoder", accept_new_options=True)
weights = c[2].selectbox("Encoder weights", ["imagenet", "none", "local file"], key="f_weights",
                         help="imagenet: downloaded once from the Hugging Face hub, then cached; "
                              "local file: a .safetensors/.pth encoder state dict on this machine")
weights_file = c[3].text_input("Weights file", key="f_weights_file", disabled=weights != "local file",
                               placeholder="/path/to/encoder.safetensors")
chosen_weights = {"none": None, "local file": weights_file.strip() or None}.get(weights, weights)
if weights == "local file" and not chosen_weights:
    st.warning("Give the path of a .safetensors or .pth encoder weights file, or pick imagenet / none.")
elif chosen_weights:
    ok, outlook = weights_outlook(encoder, chosen_weights)
    (st.caption if ok else st.warning)(f"Encoder weights: {outlook}")

with st.form("run_form"):
    c = st.columns(4)
    products = [p for p in PRODUCT_BANDS if p in catalog.columns and catalog[p].notna().any()] or [DEFAULT_PRODUCT]
    product = c[0].selectbox("Bands / product", products, key="f_product",
                             format_func=lambda p: f"{p} ({PRODUCT_BANDS[p]} bands)")
    epochs = c[1].number_input("Epochs", 1, 1000, 10, key="f_epochs")
    batch = c[2].number_input("Batch size", 1, 256, 8, key="f_batch")
    crop = c[3].selectbox("Crop", CROPS, index=2, key="f_crop")
    c = st.columns(5)
    lr = c[0].number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.5f", key="f_lr")
    val_fraction = c[1].number_input("Val fraction", 0.05, 0.9, 0.2, 0.05, key="f_val")
    split = c[2].selectbox("Split", ["random", "blocked"], key="f_split",
                           help="blocked: no val tile touches a train tile")
    seed = c[3].number_input("Seed", 0, 2**31 - 1, 0, key="f_seed")
    device = c[4].selectbox("Device", ["auto", "cuda", "cpu"], key="f_device")
    with st.expander("Advanced"):
        c = st.columns(4)
        steps_per_epoch = c[0].number_input("Steps per epoch (0 = one pass)", 0, 100000, 0, key="f_spe")
        log_every = c[1].number_input("Log every (steps)", 1, 10000, 10, key="f_log")
        workers = c[2].number_input("Data workers", 0, 32, None, key="f_workers", placeholder="auto",
                                    help="loader processes per training process; empty = auto (the cores on CUDA, "
                                         "2 on CPU); 0 = load in the training process")
        boundary = c[3].checkbox("Boundary channel", key="f_boundary")
        name = st.text_input("Run name (optional)", key="f_name")
    n_gpus = gpu_count()
    gpus = st.number_input(f"GPUs (this machine has {n_gpus})", 1, n_gpus, 1, key="f_gpus",
                           help="more than 1: one process per GPU under torchrun (DDP); the run queue counts GPUs") \
        if n_gpus > 1 else 1
    exclude_bad = bool(bad_labels) and st.checkbox(
        EXCLUDE_LABEL, key="f_exclude_bad",
        help=f"train without the {len(tiles_with_bad_labels(catalog))} tile(s) whose labels file is listed above; "
             "the run records which tiles it left out")
    use_gpu = device == "cuda" or (device == "auto" and has_gpu)
    if use_gpu and has_gpu:
        st.info(f"Device: {device_name}")
    elif device == "cuda":
        st.error("Device: cuda was asked for, but no GPU is visible: the run would fail. Pick auto or cpu.")
    else:
        st.warning("Device: CPU — training will be slow (~1 s per step of 4×256² on 2 cores). "
                   "Use small crops and few steps, or a machine with a GPU.")
    submitted = st.form_submit_button("Start training", type="primary")

if submitted:
    from bdcore.engine import runs
    from bdcore.engine.config import RunConfig

    try:
        if device == "cuda" and not has_gpu:
            raise ValueError("device cuda was asked for, but torch sees no GPU on this machine. Fix: pick auto or cpu.")
        cfg = RunConfig(
            data_root="demo" if root == "demo" else root, product=product, arch=arch, encoder=encoder,
            encoder_weights=chosen_weights, epochs=int(epochs), batch_size=int(batch),
            crop_size=None if crop == "full tile" else int(crop), lr=float(lr), val_fraction=float(val_fraction),
            split=split, seed=int(seed), device=device, gpus=int(gpus), steps_per_epoch=int(steps_per_epoch) or None,
            log_every=int(log_every), workers=None if workers is None else int(workers), boundary=bool(boundary), exclude_bad_labels=exclude_bad,
        )
        # an unlabelled folder or a bad labels file is refused now, not in the detached trainer
        res = runs.start_run(cfg, name=name.strip() or None, catalog=catalog,
                             fix=f"tick **{EXCLUDE_LABEL}** to train without those tiles")
        st.session_state["train_selected"] = res.run_dir.name
        left_out = (f" {len(res.excluded)} tile(s) with bad labels left out: {', '.join(res.excluded)}."
                    if res.excluded else "")
        if res.duplicate:  # the same form sent twice (Enter, then a click): one run
            st.info(f"Run **{res.run_dir.name}** with these settings was started a moment ago; "
                    "not starting a second one.")
        elif res.pid is None:
            st.info(f"Run **{res.run_dir.name}** is queued (position {res.position}): the machine already runs "
                    f"its limit; it starts by itself when a slot frees, even if you close the browser.{left_out}")
        else:
            st.success(f"Started run **{res.run_dir.name}** (pid {res.pid}). It keeps running if you close the "
                       f"browser.{left_out}")
    except USER_ERRORS as exc:
        st.error(f"Could not start the run: {exc}")


# ----------------------------------------------------------------------------------------------- runs, live
def run_actions(info) -> None:
    from bdcore.engine import runs

    b = st.columns([1, 1, 1, 3])
    msg = None
    try:
        if info.queue_position:  # waiting for a slot: take it out of the queue
            if b[0].button("Cancel", key="btn_cancel_queued", help="remove it from the queue; it never starts"):
                from bdcore.engine import queue

                queue.cancel(info.path)
                msg = f"Cancelled {info.run_id} (removed from the queue)."
        elif b[0].button("Stop", disabled=info.state not in ("queued", "running"), key="btn_stop"):
            with st.spinner("Stopping (saving last.pt)…"):
                msg = f"Run {info.run_id} is now {runs.stop_run(info.path)}."
        if b[1].button("Resume", disabled=info.state not in ("stopped", "interrupted", "failed", "cancelled"),
                       key="btn_resume"):
            pid = runs.resume_run(info.path)
            msg = (f"Resumed {info.run_id} (pid {pid})." if pid else
                   f"{info.run_id} is queued: it resumes by itself when a slot frees.")
        if b[2].button("Delete", disabled=info.state in ("queued", "running"), key="btn_delete"):
            st.session_state["confirm_delete"] = info.run_id
        if st.session_state.get("confirm_delete") == info.run_id:
            st.warning(f"Delete run **{info.run_id}** and all its checkpoints? This cannot be undone.")
            y, n = st.columns([1, 6])
            if y.button("Yes, delete", type="primary", key="btn_delete_yes"):
                runs.delete_run(info.path)
                st.session_state.pop("confirm_delete", None)
                st.session_state.pop("train_selected", None)
                msg = f"Deleted {info.run_id}."
            if n.button("Cancel", key="btn_delete_no"):
                st.session_state.pop("confirm_delete", None)
                rerun_fragment()
    except USER_ERRORS as exc:
        st.error(str(exc))
    if msg:
        st.session_state["train_msg"] = msg
        rerun_fragment()


@st.fragment(run_every=2)
def runs_panel() -> None:
    from bdcore.engine import runs

    st.subheader("Runs")
    if st.session_state.get("train_msg"):
        st.success(st.session_state.pop("train_msg"))
    try:
        from bdcore.engine import queue
        from bdcore.paths import runs_dir

        queue.pump(runs_dir())  # start queued runs whose slot freed without anyone starting them (e.g. kill -9)
        infos = runs.list_runs()
    except USER_ERRORS as exc:
        st.error(f"Could not list runs: {exc}")
        return
    if not infos:
        st.info("No runs yet: fill in the form above and press **Start training**.")
        return
    table = pd.DataFrame([{
        "run": i.run_id, "state": f"queued #{i.queue_position}" if i.queue_position else i.state,
        "progress": i.progress,
        "epoch": f"{i.epoch}/{i.total_epochs}", "step": i.step, "ETA": format_eta(i.eta_s) if i.state == "running" else "—",
        "img/s": "—" if i.img_per_s is None else f"{i.img_per_s:.1f}",
        "val IoU": i.metrics.get("val_iou"), "val F1": i.metrics.get("val_f1"),
        "weights": i.weights_source or "—",
        "config": i.config,
    } for i in infos])
    st.dataframe(table, hide_index=True, column_config={
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
        "val IoU": st.column_config.NumberColumn(format="%.3f"), "val F1": st.column_config.NumberColumn(format="%.3f"),
    })
    ids = [i.run_id for i in infos]
    if st.session_state.get("train_selected") not in ids:
        st.session_state["train_selected"] = ids[0]
    sel = st.selectbox("Run", ids, key="train_selected")
    info = next(i for i in infos if i.run_id == sel)
    where = f" (position {info.queue_position} in the queue)" if info.queue_position else ""
    st.markdown(f"**{info.run_id}** — state **{info.state}**{where}, epoch {info.epoch}/{info.total_epochs}, "
                f"step {info.step}, device {info.device or '?'}")
    st.progress(min(max(info.progress, 0.0), 1.0), text=f"{info.progress:.0%}")
    if info.phase and info.phase not in ("train", "starting"):
        st.caption(f"Now: {info.phase}")
    if info.weights:
        (st.warning if info.weights_source == "random" else st.caption)(f"Encoder weights: {info.weights}")
    if info.excluded_tiles:
        st.caption(f"Left out for bad labels: {', '.join(info.excluded_tiles)}")
    if info.error:
        st.error(f"Run error: {info.error}")
    run_actions(info)
    metrics = read_metrics(info.path)
    st.plotly_chart(training_curves_fig(metrics), key="train_curves")
    st.caption(f"{sum(1 for m in metrics if m.get('kind') == 'step')} step records, "
               f"{sum(1 for m in metrics if m.get('kind') == 'epoch')} epoch records · refreshed every 2 s")


runs_panel()
