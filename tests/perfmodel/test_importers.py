"""Importers: the measurement CSV and nccl-tests output, and clear errors for bad files."""

import pytest

from perfmodel import importers, measurements
from perfmodel.measurements import Measurement, MeasurementSet

# all_gather_perf on 8 ranks of one host, written in nccl-tests' layout (v2.13+: with the root column).
# algbw = size / time; busbw = algbw · (n − 1) / n.
ALL_GATHER_8 = """\
$ mpirun -np 8 ./build/all_gather_perf -b 1K -e 16M -f 64 -g 1
# nThread 1 nGpus 1 minBytes 1024 maxBytes 16777216 step: 64(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0
#
# Using devices
#  Rank  0 Group  0 Pid  41001 on     node07 device  0 [0x18] NVIDIA H200
#  Rank  1 Group  0 Pid  41002 on     node07 device  1 [0x2a] NVIDIA H200
#  Rank  2 Group  0 Pid  41003 on     node07 device  2 [0x3a] NVIDIA H200
#  Rank  3 Group  0 Pid  41004 on     node07 device  3 [0x5d] NVIDIA H200
#  Rank  4 Group  0 Pid  41005 on     node07 device  4 [0x9a] NVIDIA H200
#  Rank  5 Group  0 Pid  41006 on     node07 device  5 [0xab] NVIDIA H200
#  Rank  6 Group  0 Pid  41007 on     node07 device  6 [0xba] NVIDIA H200
#  Rank  7 Group  0 Pid  41008 on     node07 device  7 [0xdb] NVIDIA H200
#
#                                                              out-of-place                       in-place
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)
        1024           256     float    none      -1      9.8    0.10    0.09       0      9.6    0.11    0.09       0
       65536         16384     float    none      -1     14.7    4.46    3.90       0     14.5    4.52    3.95       0
node07:41001:41001 [0] NCCL INFO comm 0x55d0 rank 0 nranks 8 cudaDev 0 busId 18000 - Destroy COMPLETE
     1048576        262144     float    none      -1     25.3   41.45   36.26       0     24.9   42.11   36.85       0
    16777216       4194304     float    none      -1    190.4   88.12   77.10       0    188.2   89.15   78.00       0
# Out of bounds values : 0 OK
# Avg bus bandwidth    : 29.53
#
"""


def _write(tmp_path, text, name="all_gather_perf.log"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_nccl_tests_all_gather_sample(tmp_path):
    mset = importers.read_nccl_tests(_write(tmp_path, ALL_GATHER_8))
    assert len(mset) == 8  # 4 sizes × (out-of-place, in-place)
    r = mset.rows[4]
    assert (r.op, r.kernel, r.dtype, r.n_devices, r.bytes) == (
        "all_gather", "all_gather_perf/out-of-place", "float32", 8, 1048576)
    assert r.median_s == pytest.approx(25.3e-6) and r.min_s == r.median_s and r.iqr_s == 0.0
    assert r.n_repeats == 20 and r.source == "nccl-tests" and not r.emulated
    assert [x.median_s for x in mset.rows[1::2]] == pytest.approx([9.6e-6, 14.5e-6, 24.9e-6, 188.2e-6])
    assert mset.env["device_kind"] == "NVIDIA H200" and mset.env["n_hosts"] == 1
    assert mset.env["log_lines_skipped"] == 1 and mset.env["iters"] == 20


def _table(op_binary, n, sizes_times, type_="float", redop="sum", root=True, wrong="0"):
    """nccl-tests-style output for `op_binary` on n ranks (rank lines included)."""
    op = importers.NCCL_TESTS[op_binary]
    factor = importers.bus_bandwidth_factor(op, n)
    lines = ["# nThread 1 nGpus 1 minBytes 8 maxBytes 8 step: 2(factor) warmup iters: 5 iters: 50 agg iters: 1",
             "# Using devices"]
    lines += [f"#  Rank {r:2d} Group  0 Pid  {100 + r} on host{r // 8} device  {r % 8} [0x{r:02x}] NVIDIA H100 80GB HBM3"
              for r in range(n)]
    root_col = "    root" if root else ""
    lines.append(f"#       size         count      type   redop{root_col}     time   algbw   busbw #wrong     time   algbw   busbw #wrong")
    for size, t in sizes_times:
        a = size / t / 1e3
        root_val = "      -1" if root else ""
        lines.append(f"{size:12d}  {size // 4:12d}  {type_:>8s}  {redop:>6s}{root_val}  {t:7.2f}  {a:6.2f}  {a * factor:6.2f}  "
                     f"{wrong:>6s}  {t:7.2f}  {a:6.2f}  {a * factor:6.2f}  {wrong:>6s}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("binary,n", [("all_reduce_perf", 16), ("reduce_scatter_perf", 8), ("alltoall_perf", 4),
                                      ("sendrecv_perf", 2), ("all_gather_perf", 8)])
def test_nccl_tests_each_binary(tmp_path, binary, n):
    text = _table(binary, n, [(4096, 12.5), (1 << 24, 230.75)], root=binary != "alltoall_perf")
    mset = importers.read_nccl_tests(_write(tmp_path, text, f"{binary}.txt"))
    assert {r.op for r in mset.rows} == {importers.NCCL_TESTS[binary]}
    assert [r.bytes for r in mset.rows] == [4096, 4096, 1 << 24, 1 << 24]
    assert all(r.n_devices == n for r in mset.rows)
    assert mset.env["n_hosts"] == (n + 7) // 8


def test_nccl_tests_op_inferred_from_text_or_given(tmp_path):
    text = _table("all_reduce_perf", 8, [(1 << 20, 40.0)])
    path = _write(tmp_path, text, "run.txt")
    with pytest.raises(ValueError, match="pass op= one of"):
        importers.read_nccl_tests(path)
    assert importers.read_nccl_tests(path, op="all_reduce").rows[0].op == "all_reduce"
    path = _write(tmp_path, "./all_reduce_perf -b 8 -e 1M\n" + text, "run2.txt")
    assert importers.read_nccl_tests(path).rows[0].op == "all_reduce"
    # A wrong op is caught by the bus-bandwidth factor, not fitted.
    with pytest.raises(ValueError, match=r"run\.txt:\d+: field 'busbw \(out-of-place\)'.*wrong op or rank count"):
        importers.read_nccl_tests(path.with_name("run.txt"), op="all_gather_perf")
    with pytest.raises(ValueError, match="op='broadcast_perf' is not one of"):
        importers.read_nccl_tests(path, op="broadcast_perf")


def test_nccl_tests_without_rank_lines_needs_n_devices(tmp_path):
    text = "\n".join(l for l in _table("sendrecv_perf", 2, [(8192, 7.25)]).splitlines() if "Rank" not in l)
    path = _write(tmp_path, text, "sendrecv_perf.out")
    with pytest.raises(ValueError, match="pass n_devices="):
        importers.read_nccl_tests(path)
    assert importers.read_nccl_tests(path, n_devices=2).rows[0].n_devices == 2
    with pytest.raises(ValueError, match="n_devices=4 but the file lists 8 ranks"):
        importers.read_nccl_tests(_write(tmp_path, ALL_GATHER_8), n_devices=4)


def _corrupt(text, old, new):
    assert old in text
    return text.replace(old, new, 1)


# (replace this, with that) in ALL_GATHER_8 → the error names line and field. The third data row is line 20.
NCCL_BAD = [
    ("    25.3   41.45", "     nan   41.45", r":20: field 'time \(out-of-place\)': 'nan' is not finite"),
    ("    24.9   42.11", "    -24.9  42.11", r":20: field 'time \(in-place\)': '-24.9' must be positive"),
    ("    24.9   42.11", "     0.0   42.11", r":20: field 'time \(in-place\)': '0.0' must be positive"),
    ("   36.85       0", "   36.85       3", r":20: field '#wrong \(in-place\)': 3 wrong results"),
    ("  41.45   36.26", "  14.45   36.26", r":20: field 'algbw \(out-of-place\)': 14.45 GB/s but size/time"),
    ("   262144     float", "   262144     float8", r":20: field 'type': 'float8' is not one of"),
    ("     1048576 ", "     1048576.5 ", r":20: field 'size': '1048576.5' is not a non-negative integer"),
]


@pytest.mark.parametrize("old,new,match", NCCL_BAD)
def test_nccl_tests_bad_rows_name_line_and_field(tmp_path, old, new, match):
    with pytest.raises(ValueError, match=match):
        importers.read_nccl_tests(_write(tmp_path, _corrupt(ALL_GATHER_8, old, new)))


def test_nccl_tests_structural_errors(tmp_path):
    short = _corrupt(ALL_GATHER_8, "  -1     25.3", "  25.3")
    with pytest.raises(ValueError, match=r":20: 12 fields, the table header has 13"):
        importers.read_nccl_tests(_write(tmp_path, short))
    with pytest.raises(ValueError, match="no nccl-tests table"):
        importers.read_nccl_tests(_write(tmp_path, "# nThread 1 nGpus 8\nall_gather_perf crashed\n"))
    twice = ALL_GATHER_8 + ALL_GATHER_8.split("# Using devices")[1].split("#  Rank  0")[0] + \
        "#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong\n"
    with pytest.raises(ValueError, match=r":\d+: a second table \(the first starts at line 15\)"):
        importers.read_nccl_tests(_write(tmp_path, twice))
    with pytest.raises(ValueError, match=r":15: field 'time': expected 'time algbw busbw #wrong' twice"):
        importers.read_nccl_tests(_write(tmp_path, _corrupt(ALL_GATHER_8, "busbw #wrong     time", "#wrong     time")))


# ----------------------------------------------------------------------------- measurement CSV

GOOD_CSV = """\
# paretolab-measurements schema=1
# env={"backend": "gpu"}
op,dtype,m,n,k,bytes,flops,median_s
gemm,bfloat16,4096,4096,4096,100663296,137438953472,0.00018
gemm,bfloat16,1024,1024,1024,6291456,2147483648,6.1e-06
"""


def test_csv_minimal_columns_take_defaults(tmp_path):
    mset = measurements.read_csv(_write(tmp_path, GOOD_CSV, "m.csv"))
    assert mset.env == {"backend": "gpu"}
    r = mset.rows[0]
    assert (r.op, r.kernel, r.dtype, r.m, r.flops, r.median_s, r.min_s, r.iqr_s, r.n_devices, r.source) == (
        "gemm", "gemm", "bfloat16", 4096, 137438953472, 0.00018, 0.00018, 0.0, 1, "csv")


CSV_BAD = [
    ("# paretolab-measurements schema=1", "op,dtype", r":1: expected the magic line"),
    ("schema=1", "schema=2", r":1: field 'schema'.*knows schema=1"),
    ('# env={"backend": "gpu"}', '# env={"backend": gpu}', r":2: field 'env': invalid JSON"),
    ("op,dtype,m", "op,dtype,mm", r":3: field 'header': unknown columns \['mm'\]"),
    ("op,dtype,m,n,k,bytes,flops,median_s", "op,dtype,m,n,k,bytes,flops", r":3: field 'header': .*missing \['median_s'\]"),
    ("0.00018", "nan", r":4: field 'median_s': 'nan' is not finite"),
    ("0.00018", "inf", r":4: field 'median_s': 'inf' is not finite"),
    ("0.00018", "-0.00018", r":4: field 'median_s': '-0.00018' must be positive"),
    ("0.00018", "0", r":4: field 'median_s': '0' must be positive"),
    ("0.00018", "fast", r":4: field 'median_s': 'fast' is not a number"),
    ("gemm,bfloat16,1024,1024", "gemm,bfloat16,1024.5,1024", r":5: field 'm': '1024.5' is not a non-negative"),
    ("gemm,bfloat16,1024,1024", "gemm,bfloat16,-1024,1024", r":5: field 'm': '-1024' is not a non-negative"),
    ("gemm,bfloat16,1024,1024", "conv,bfloat16,1024,1024", r":5: field 'op': 'conv' is not one of"),
    (",6.1e-06", ",6.1e-06,7", r":5: 9 fields but the header has 8"),
    ("6.1e-06\n", "6.1e-06\n\n", r":6: empty line"),
]


@pytest.mark.parametrize("old,new,match", CSV_BAD)
def test_csv_bad_files_name_line_and_field(tmp_path, old, new, match):
    with pytest.raises(ValueError, match=match):
        measurements.read_csv(_write(tmp_path, _corrupt(GOOD_CSV, old, new), "m.csv"))


def test_csv_cross_field_errors_name_the_field(tmp_path):
    text = GOOD_CSV.replace("median_s\n", "median_s,min_s\n").replace("0.00018\n", "0.00018,0.0002\n") \
        .replace("6.1e-06\n", "6.1e-06,6e-06\n")
    with pytest.raises(ValueError, match=r":4: field 'min_s': min_s=0.0002 exceeds median_s=0.00018"):
        measurements.read_csv(_write(tmp_path, text, "m.csv"))
    text = GOOD_CSV.replace("median_s\n", "median_s,noisy\n").replace("0.00018\n", "0.00018,yes\n")
    with pytest.raises(ValueError, match=r":4: field 'noisy': 'yes' must be 0 or 1"):
        measurements.read_csv(_write(tmp_path, text, "m.csv"))


def test_read_measurements_dispatches_and_concat(tmp_path):
    csv_path = measurements.write_csv(tmp_path / "a.csv", MeasurementSet(
        (Measurement(op="copy", kernel="copy", dtype="float32", elements=8, bytes=64, median_s=1e-5, min_s=1e-5),),
        {"backend": "cpu"}))
    a = importers.read_measurements(csv_path)
    b = importers.read_measurements(_write(tmp_path, ALL_GATHER_8))
    both = importers.concat(a, b)
    assert len(both) == 9 and both.env["parts"][0] == {"backend": "cpu"}
    with pytest.raises(ValueError, match="nccl-tests options"):
        importers.read_measurements(csv_path, op="all_reduce")
