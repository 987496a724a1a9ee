"""Text the panel shows about a perturber file and an evaluation's metrics."""

from slicer.i18n import tr as _


def describePerturber(metadata: dict, backboneName: str) -> str:
    """Return one paragraph about a perturber file's training, warning when it targets another backbone."""
    groups = " / ".join(metadata.get("groups", []))
    final = metadata.get("final_losses", {})
    text = _("Trained for {backbone} to hide {attribute} ({groups}); alpha {alpha}, beta {beta}, "
             "{epochs} epochs on {images} images; final training Dice {dice}.").format(
        backbone=metadata.get("backbone", "?"), attribute=metadata.get("attribute", "?"), groups=groups,
        alpha=metadata.get("alpha", "?"), beta=metadata.get("beta", "?"), epochs=metadata.get("epochs", "?"),
        images=metadata.get("train_images", "?"),
        dice=f"{final['dsc']:.3f}" if isinstance(final.get("dsc"), (int, float)) else "?")
    if metadata.get("backbone") not in (None, backboneName):
        text += " " + _("Warning: the selected backbone is {selected}; choose {backbone} to use this perturber.").format(
            selected=backboneName, backbone=metadata.get("backbone"))
    return text


def summarizeMetrics(metrics: dict) -> str:
    """Return a two-line summary of an evaluation: overall Dice and Dice gap between groups, base vs APPLE."""
    base, apple = metrics.get("base") or {}, metrics.get("apple")

    def value(entry, key):
        number = (entry or {}).get(key)
        return "-" if number is None else f"{number:.3f}"

    attribute = metrics.get("attribute", "group")
    if apple is None:
        return _("Dice overall {dice}; Dice gap between {attribute} groups {delta} (no perturber).").format(
            dice=value(base, "dsc_overall"), attribute=attribute, delta=value(base, "dsc_delta"))
    return _("Dice overall: base {base} -> APPLE {apple}.\nDice gap between {attribute} groups (DSC_delta): "
             "base {baseDelta} -> APPLE {appleDelta}.").format(
        base=value(base, "dsc_overall"), apple=value(apple, "dsc_overall"), attribute=attribute,
        baseDelta=value(base, "dsc_delta"), appleDelta=value(apple, "dsc_delta"))
