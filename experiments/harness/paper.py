"""The paper's reference numbers, each with its provenance mark: "text"
(stated in the paper's text), "2nd" (quoted by independent reimplementations), "rec" (recalled,
approximate; never asserted in tests).

References: Szegedy et al. 2014, Tables 1–5 and Sec. 4.2.
"""

from __future__ import annotations

_S, _R = "2nd", "rec"

# Table 1 [2nd]: model -> (train error, test error, average minimum distortion).
TABLE1 = {
    "FC10(1e-4)": (0.067, 0.074, 0.062), "FC10(1e-2)": (0.10, 0.094, 0.1), "FC10(1)": (0.212, 0.20, 0.14),
    "FC100-100-10": (0.0, 0.0164, 0.058), "FC200-200-10": (0.0, 0.0154, 0.065),
    "AE400-10": (0.0057, 0.019, 0.086),
}
TABLE1_MODELS = tuple(TABLE1)

# Table 2: row -> ([(error of column model, mark)] over TABLE1_MODELS, average distortion of the row).
TABLE2 = {
    "FC10(1e-4)": ([(1.0, _S), (.117, _R), (.227, _R), (.02, _S), (.039, _R), (.027, _S)], .062),
    "FC10(1e-2)": ([(.871, _S), (1.0, _R), (.352, _R), (.359, _S), (.273, _R), (.098, _S)], .1),
    "FC10(1)": ([(.719, _S), (.762, _R), (1.0, _R), (.481, _S), (.47, _R), (.344, _S)], .14),
    "FC100-100-10": ([(.289, _S), (.137, _R), (.211, _R), (1.0, _S), (.066, _R), (.02, _S)], .058),
    "FC200-200-10": ([(.382, _S), (.14, _R), (.238, _R), (.203, _S), (1.0, _R), (.027, _S)], .065),
    "AE400-10": ([(.234, _R), (.16, _R), (.248, _R), (.094, _R), (.066, _R), (1.0, _R)], .086),
    "Gaussian noise, stddev 0.1": ([(.05, _S), (.101, _R), (.183, _R), (0., _S), (0., _R), (.008, _S)], .1),
    "Gaussian noise, stddev 0.3": ([(.156, _S), (.113, _R), (.227, _R), (.05, _S), (.043, _R), (.031, _S)], .3),
}

# Table 3 [rec]: model -> (error on P1, on P2, test error, minimum average distortion).
TABLE3 = {"FC100-100-10": (0.0, 0.024, 0.02, 0.062), "FC123-456-10": (0.0, 0.025, 0.021, 0.059),
          "FC100-100-10'": (0.023, 0.0, 0.021, 0.058)}

# Table 4: row -> [(error, mark)] over (FC100-100-10, FC123-456-10, FC100-100-10').
TABLE4 = {
    "Distorted for FC100-100-10": [(1.0, _R), (.262, _S), (.059, _S)],
    "Distorted for FC123-456-10": [(.0625, _R), (1.0, _R), (.051, _R)],
    "Distorted for FC100-100-10'": [(.082, _R), (.082, _R), (1.0, _R)],
    "Gaussian noise, stddev 0.06": [(.022, _R), (.026, _R), (.024, _R)],
    "Distorted for FC100-100-10, magnified to 0.1": [(1.0, _R), (.98, _S), (.43, _S)],
    "Distorted for FC123-456-10, magnified to 0.1": [(.96, _R), (1.0, _R), (.22, _R)],
    "Distorted for FC100-100-10', magnified to 0.1": [(.27, _R), (.5, _R), (1.0, _R)],
    "Gaussian noise, stddev 0.1": [(.026, _S), (.028, _S), (.027, _S)],
}

# Table 5 [2nd]: AlexNet layer -> upper Lipschitz bound (the authors' 2013 weights).
TABLE5 = {"conv1": 2.75, "conv2": 10.0, "conv3": 7.0, "conv4": 7.5, "conv5": 11.0, "fc1": 3.12, "fc2": 4.0,
          "fc3": 4.0}

# End of Sec. 4.2 [text]: a 100-100-10 net, test error with weight decay alone vs with adversarial pools.
ADVERSARIAL_TRAINING = {"weight_decay_only": 0.016, "with_pools_below": 0.012}


def table2_cell(row: str, column: str) -> tuple[float, str] | None:
    """The paper's Table 2 ``(error, mark)`` for a row and column, or None where it has none."""
    if row not in TABLE2 or column not in TABLE1_MODELS:
        return None
    return TABLE2[row][0][TABLE1_MODELS.index(column)]


def train_test_errors(model: str, split: str = "train") -> tuple[float | None, float | None]:
    """The paper's (train, test) error of ``model`` trained on ``split``: Table 3 for a P1 model (train =
    its error on P1), else Table 1; ``(None, None)`` where the paper has no such row."""
    t = TABLE3.get(model) if split == "p1" else TABLE1.get(model)
    return (None, None) if t is None else ((t[0], t[2]) if split == "p1" else t[:2])
