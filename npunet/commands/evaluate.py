"""`npunet evaluate PRED GT`: the FLARE 2024 DSC / NSD evaluation of label maps against ground truth, as a
command (the metric itself: npunet.evaluate)."""

from __future__ import annotations

from npunet.evaluate import check_json_path, evaluate_paths, format_report, parse_labels, write_json


def add_arguments(parser) -> None:
    parser.add_argument("pred", metavar="PRED", help="predicted label map (.nii.gz) or a folder of CASE.nii.gz")
    parser.add_argument("gt", metavar="GT", help="ground-truth label map or folder; its header gives the spacing")
    parser.add_argument("--json", metavar="OUT.json", help="also write the numbers to this JSON file")
    parser.add_argument("--labels", metavar="1,2,3",
                        help="organs to score, by id or name (default: all 13)")


def run(args) -> int:
    """Print the tables; exit 0, or 1 when a case of a folder could not be scored."""
    labels = parse_labels(args.labels)
    if args.json:
        check_json_path(args.json, inputs=(args.pred, args.gt))
    result = evaluate_paths(args.pred, args.gt, labels)
    print(format_report(result))
    if args.json:
        write_json(result, args.json)
    return 1 if result["errors"] else 0
