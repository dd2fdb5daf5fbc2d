"""How a bundle's variants are named and labelled in BentoML's model store.

Export registers each variant as ``NAME-VARIANT:VERSION`` with these labels; the service
finds bundles by them. One definition, so the writer and the reader cannot drift.
"""

KIND_LABEL = "slimserve"  # value KIND_BUNDLE: a model slimserve registered from a bundle
KIND_BUNDLE = "bundle"
BUNDLE_LABEL = "bundle"  # the bundle's name
VARIANT_LABEL = "variant"  # the variant's name


def model_name(bundle: str, variant: str) -> str:
    return f"{bundle}-{variant}"


def store_labels(bundle: str, variant: str) -> dict[str, str]:
    return {BUNDLE_LABEL: bundle, VARIANT_LABEL: variant, KIND_LABEL: KIND_BUNDLE}


def is_bundle_model(labels: dict[str, str]) -> bool:
    return labels.get(KIND_LABEL) == KIND_BUNDLE
