"""32 concurrent clients x 4 streaming requests on the tiny model (see load_test.py): zero
failures, every stream complete and equal to its prompt's answer alone, no slot left busy."""

import load_test
from conftest import TINY, Server


def test_32_clients_4_streams_each():
    # 8 slots: 32 clients keep them full and 24 requests waiting (the queue holds 64).
    s = Server(TINY, "--parallel", "8", "-c", "256", "--queue", "64", "--threads", "2", "-q")
    try:
        failures, report = load_test.asyncio.run(load_test.run(s.url, 32, 4, 16))
        print(report)
        assert not failures, "\n".join(failures[:10])
        assert report["requests"] == report["ok"] == 128
        # The slots really were shared: most decode steps advanced several streams.
        assert report["decode_rows_per_step"] > 4, report
    finally:
        s.stop()
