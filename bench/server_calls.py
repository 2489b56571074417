"""Python function calls per gRPC ModelInfer in the server's thread: a count, not a timing,
so it compares two source trees exactly on a noisy host. The tree is the first argument, and
PYTHONPATH must name it too (the model workers are started from it):

    PYTHONPATH=/tmp/base/src .venv/bin/python bench/server_calls.py /tmp/base/src > base.txt
    PYTHONPATH=/tmp/new/src .venv/bin/python bench/server_calls.py /tmp/new/src > new.txt

2,000 calls of the `mlp` model of bench/out/models/inferd (built by bench/run.py) after 300
warm-up calls, from tritonclient in the main thread; only the server's thread is counted.
Prints the calls per request and the 60 most called functions.
"""

import collections
import sys
import tempfile
import threading

tree = sys.argv[1]
sys.path.insert(0, tree)
import numpy as np  # noqa: E402
import tritonclient.grpc as tc  # noqa: E402

from inferd import serve  # noqa: E402

counts = collections.Counter()
active = [False]


def prof(frame, event, arg):  # type: ignore[no-untyped-def]
    if event == "call" and active[0]:
        co = frame.f_code
        counts[(co.co_filename.replace(tree, ""), co.co_name)] += 1


threading.setprofile(prof)
srv = serve(
    http_port=0,
    block=False,
    data_dir=tempfile.mkdtemp(),
    model_repository="bench/out/models/inferd",
    grpc={"port": 0},
    log_level="warning",
    http={"access_log": False},
)
threading.setprofile(None)
c = tc.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")
meta = c.get_model_metadata("mlp")
inp = meta.inputs[0]
shape = [1] + [int(d) for d in inp.shape[1:]]
t = tc.InferInput(inp.name, shape, inp.datatype)
t.set_data_from_numpy(np.random.rand(*shape).astype(np.float32))
for _ in range(300):
    c.infer("mlp", [t])
N = 2000
active[0] = True
for _ in range(N):
    c.infer("mlp", [t])
active[0] = False
total = sum(counts.values())
print(f"{tree}: {total / N:.1f} Python calls per request in the server")
for (f, n), k in counts.most_common(60):
    print(f"  {k / N:6.2f}  {n}  {f}")
c.close()
srv.stop()
