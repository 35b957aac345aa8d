"""Reading TensorBoard event files back, for tests that check what a run logged."""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2


def read_events(log_dir: Path) -> tuple[dict[str, list[float]], dict[str, list]]:
    """(scalars by tag, image events by tag) merged over every event file under ``log_dir``."""
    scalars: dict[str, list[float]] = {}
    images: dict[str, list] = {}
    for f in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            images.setdefault(tag, []).extend(acc.Images(tag))
    return scalars, images


def scalar_steps(log_dir: Path, tag: str) -> list[int]:
    """The logger steps at which ``tag`` was written, over every event file under ``log_dir``."""
    steps = []
    for f in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars(tag)]
    return sorted(steps)


def trial_name(tb_dir: Path) -> str:
    """The name the HPARAMS view shows for the run's trial (its session group)."""
    for f in sorted(Path(tb_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f))
        acc.Reload()
        try:
            content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        except KeyError:  # the curves' event files: no HPARAMS data
            continue
        return plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.group_name
    return ""


def read_hparams(tb_dir: Path) -> tuple[list[tuple[str, bool]], dict, list[str]]:
    """([(name, differs)] in the experiment's order, the session's values, its metric tags)."""
    infos, values, metrics = [], {}, []
    for f in sorted(Path(tb_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f))
        acc.Reload()
        try:
            contents = acc.PluginTagToContent("hparams")
        except KeyError:  # the curves' event files: no HPARAMS data
            continue
        for tag, content in contents.items():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if tag == "_hparams_/experiment":
                infos = [(i.name, i.differs) for i in data.experiment.hparam_infos]
                metrics = [m.name.tag for m in data.experiment.metric_infos]
            if tag == "_hparams_/session_start_info":
                values = {
                    k: v.number_value or v.string_value for k, v in data.session_start_info.hparams.items()
                }
    return infos, values, metrics
