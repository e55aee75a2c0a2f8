"""Evaluation: labelled image sets, cached image embeddings, and the paper's few-shot protocol.

    taxoclip eval few-shot ../shared/data/bio-mini --model taxoclip-mini --random-init --out results/

    >>> from taxoclip.evaluate import load_datasets, image_embeddings, few_shot
    >>> for ds in load_datasets(["../shared/data/bio-mini"]):
    ...     feats = image_embeddings(model, ds)
    ...     print(ds.name, few_shot(feats, ds.labels["class"].to_numpy()))
"""
from .datasets import EvalDataset, load_datasets
from .embeddings import image_embeddings, random_init_model
from .fewshot import few_shot, simpleshot_accuracy
from .runs import few_shot_runs, zero_shot_runs
from .zeroshot import label_bank, zero_shot

__all__ = ["EvalDataset", "load_datasets", "image_embeddings", "random_init_model", "few_shot", "simpleshot_accuracy",
           "label_bank", "zero_shot", "few_shot_runs", "zero_shot_runs"]
