#!/usr/bin/env python3
"""TQN's loss parameters from the paper's Section II-B, beside its Table I.

    alpha_s = Delta^2                                                      (Eq. 9)
    delta   = 4 Delta^2                                                    (Sec. II-B 2)
    alpha_d = 4 Delta^2 (K + omega) + eps^2 (N - K - omega),  K = ceil(ceil(log2 C) / 2)   (Eq. 16)

Eq. 16 counts K + omega bits on which anchor and negative must disagree (each worth at least
(2 Delta)^2 = delta) and eps^2 for each remaining bit. The paper's Table I does not follow it:

    CIFAR-10 (C = 10, M = ceil(log2 C) = 4):  Table I = Eq. 16 + 1.10 at 12, 24 and 48 bits,
        i.e. (4 Delta^2 - eps^2) * 2 = 0.55 * 2 more: Table I counts K = M = 4 bits, not M/2 = 2.
    In-shop (C = 7,982, M = 13):              Table I = Eq. 16 - 0.48 at 48, 96 and 192 bits,
        i.e. (4 Delta^2 - eps^2) * 1 = 0.48 less: Table I counts K = floor(M/2) = 6, not ceil = 7.

Both tables' slopes in N are exactly eps^2, so the rest of Eq. 16 is what the authors used; only
the number of "flipped" bits differs, and not in one consistent way. Replication configs keep
Table I's values (the paper's choice); `--eq16` shows what the formula itself gives.

    python -m prototxt.tqn_params --table1                 # Table I beside Eq. 16, with the implied K
    python -m prototxt.tqn_params --classes 10 --bits 48 --omega 2 --epsilon 0.3 [--Delta 0.4]
"""
import argparse
import math
import sys

PAPER_DELTA = 0.4  # "In all experiments, Delta = 0.4"

# Table I of the paper: (data set, C, bits) -> (omega, epsilon, alpha_d)
TABLE_I = {
    ("cifar10", 10, 12): (1, 0.3, 3.83),
    ("cifar10", 10, 24): (2, 0.3, 5.46),
    ("cifar10", 10, 48): (2, 0.3, 7.62),
    ("inshop", 7982, 48): (3, 0.4, 12.00),
    ("inshop", 7982, 96): (3, 0.4, 19.68),
    ("inshop", 7982, 192): (3, 0.4, 35.04),
}


def alpha_s(Delta=PAPER_DELTA):
    """Eq. 9."""
    _check_Delta(Delta)
    return Delta ** 2


def clip_delta(Delta=PAPER_DELTA):
    """delta = 4 Delta^2: the squared gap of a bit whose two values sit Delta either side of 0.5."""
    _check_Delta(Delta)
    return 4 * Delta ** 2


def flipped_bits(num_classes):
    """K = ceil(ceil(log2 C) / 2) of Eq. 14/16."""
    if num_classes < 2:
        raise ValueError(f"the number of classes must be >= 2, got {num_classes}")
    return math.ceil(math.ceil(math.log2(num_classes)) / 2)


def alpha_d_eq16(num_classes, bits, omega, epsilon, Delta=PAPER_DELTA):
    """Eq. 16: 4 Delta^2 (K + omega) + eps^2 (N - K - omega)."""
    _check_Delta(Delta)
    if not 0 <= epsilon <= 0.5:
        raise ValueError(f"epsilon must lie in [0, 0.5] (Eq. 16), got {epsilon}")
    k = flipped_bits(num_classes) + omega
    if not 0 <= omega or k > bits:
        raise ValueError(f"K + omega = {k} flipped bits do not fit in {bits} bits")
    return 4 * Delta ** 2 * k + epsilon ** 2 * (bits - k)


def implied_flipped_bits(alpha_d, bits, epsilon, Delta=PAPER_DELTA):
    """The K + omega that makes Eq. 16 give `alpha_d` (to read Table I)."""
    return (alpha_d - epsilon ** 2 * bits) / (4 * Delta ** 2 - epsilon ** 2)


def table_i_alpha_d(dataset, bits):
    """Table I's alpha_d for ('cifar10' | 'inshop', bits)."""
    for (name, _, n), (_, _, value) in TABLE_I.items():
        if name == dataset and n == bits:
            return value
    known = sorted({(k[0], k[2]) for k in TABLE_I})
    raise KeyError(f"Table I has no alpha_d for {dataset} at {bits} bits; it has {known}")


def table_i_row(num_classes):
    """The data set row of Table I for a data set of `num_classes` classes (OURS: the paper gives
    alpha_d for C = 10 and C = 7,982 only): the row whose K = ceil(ceil(log2 C) / 2) flipped
    bits (Eq. 14) is nearest to this data set's, the smaller C on a tie. 2..64 classes -> cifar10."""
    k = flipped_bits(num_classes)
    rows = sorted({(name, c) for name, c, _ in TABLE_I}, key=lambda r: r[1])
    return min(rows, key=lambda r: abs(flipped_bits(r[1]) - k))[0]


def alpha_d_for_classes(num_classes, bits):
    """Table I's alpha_d of the row table_i_row(num_classes) at `bits`."""
    return table_i_alpha_d(table_i_row(num_classes), bits)


def _check_Delta(Delta):
    if not 0 <= Delta <= 0.5:
        raise ValueError(f"Delta must lie in [0, 0.5] (Eq. 8), got {Delta}")


def table_rows(Delta=PAPER_DELTA):
    rows = []
    for (name, c, n), (omega, eps, printed) in TABLE_I.items():
        eq16 = alpha_d_eq16(c, n, omega, eps, Delta)
        rows.append(dict(dataset=name, classes=c, bits=n, omega=omega, epsilon=eps,
                         table_i=printed, eq16=round(eq16, 4), difference=round(printed - eq16, 4),
                         eq16_flipped=flipped_bits(c) + omega,
                         table_i_flipped=round(implied_flipped_bits(printed, n, eps, Delta), 4)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description="TQN's alpha_s, delta and alpha_d (Eqs. 9 and 16) "
                                 "and the paper's Table I.")
    ap.add_argument("--table1", action="store_true", help="Table I beside Eq. 16")
    ap.add_argument("--classes", type=int, help="C, the number of classes (In-shop: items)")
    ap.add_argument("--bits", type=int, help="N, the code length")
    ap.add_argument("--omega", type=float, help="omega of Eq. 13")
    ap.add_argument("--epsilon", type=float, help="epsilon of Eq. 16")
    ap.add_argument("--Delta", type=float, default=PAPER_DELTA, help="Delta of Eq. 8 (paper: 0.4)")
    args = ap.parse_args(argv)
    try:
        if args.table1:
            print(f"Delta = {args.Delta}: alpha_s = {alpha_s(args.Delta):.4g}, "
                  f"delta = {clip_delta(args.Delta):.4g}")
            print("| data set | C | bits | omega | eps | alpha_d Table I | alpha_d Eq. 16 | "
                  "Table I - Eq. 16 | K+omega Eq. 16 | K+omega implied by Table I |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for r in table_rows(args.Delta):
                print(f"| {r['dataset']} | {r['classes']} | {r['bits']} | {r['omega']:g} | "
                      f"{r['epsilon']} | {r['table_i']:.2f} | {r['eq16']:.2f} | "
                      f"{r['difference']:+.2f} | {r['eq16_flipped']:g} | {r['table_i_flipped']:g} |")
            print("\nTable I's slope in N is eps^2 as in Eq. 16; it counts K = ceil(log2 C) (CIFAR-10) "
                  "or floor(ceil(log2 C)/2) (In-shop)\nflipped bits instead of Eq. 16's "
                  "ceil(ceil(log2 C)/2). Replication configs use Table I.")
            return 0
        missing = [k for k in ("classes", "bits", "omega", "epsilon") if getattr(args, k) is None]
        if missing:
            ap.error("give --table1, or all of --classes --bits --omega --epsilon "
                     f"(missing: {', '.join('--' + m for m in missing)})")
        value = alpha_d_eq16(args.classes, args.bits, args.omega, args.epsilon, args.Delta)
        print(f"alpha_s = {alpha_s(args.Delta):.4g}  delta = {clip_delta(args.Delta):.4g}  "
              f"alpha_d (Eq. 16) = {value:.4g}  "
              f"(K + omega = {flipped_bits(args.classes) + args.omega:g} flipped bits)")
        return 0
    except (ValueError, KeyError) as e:
        print(f"tqn_params: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
