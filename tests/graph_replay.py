"""The GPU tests' CUDA-graph check (tests/test_torch_op_gpu.py, test_torch_variants_gpu.py): a
model's training step, captured once after a warm-up on a side stream, replayed with new inputs,
gives eager's output bit for bit and its parameter gradients within 1% (dQ's atomic adds land in
any order)."""


def check_replay_matches_eager(torch, model, shape, dtype, seeds=(1, 2)):
    static_x = torch.randn(shape, device="cuda", dtype=dtype)

    def step(x):
        y = model(x)
        y.float().pow(2).mean().backward()
        return y

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up: compiles the kernels and prepares the calls
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            step(static_x)
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # a host sync or a CuPy allocation in the op would fail here
        static_y = step(static_x)
    static_grads = [p.grad for p in model.parameters()]  # the graph writes these on replay

    for seed in seeds:  # new inputs each replay: the graph reads the static buffer anew
        x = torch.randn(shape, device="cuda", dtype=dtype,
                        generator=torch.Generator(device="cuda").manual_seed(seed))
        static_x.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        replayed = static_y.clone()
        grads = [g.clone() for g in static_grads]
        for p in model.parameters():
            p.grad = None
        eager = step(x)
        assert torch.equal(replayed, eager)
        for p, g in zip(model.parameters(), grads):
            assert float((p.grad.float() - g.float()).abs().max()) <= \
                1e-2 * max(1e-6, float(g.float().abs().max()))
