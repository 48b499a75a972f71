"""Exercise 03.1: float16 overflows past 65,504 but keeps more digits; bfloat16 keeps the range, rounds harder."""
import torch

from gemma_widgets.course import check

for value in (70_000.0, 1e-6, 3.14159):
    x = torch.tensor(value)
    print(f"{value:>10}: float16 {x.half().item():<12g} bfloat16 {x.bfloat16().item():<12g}")
check("70,000 overflows float16 to inf", torch.isinf(torch.tensor(70_000.0).half()).item())
check("bfloat16 holds 70,000 (rounded to 70,144: 7 stored mantissa bits)",
      torch.tensor(70_000.0).bfloat16().item() == 70_144.0)
check("1e-6 is below float16's smallest normal (6.1e-5): it survives only as a less precise subnormal",
      torch.tensor(1e-6).half().item() != 1e-6 and torch.tensor(1e-6).half().item() > 0)
print("float16: 5 exponent bits (range to 65,504), 10 mantissa bits. bfloat16: 8 and 7, float32's range.")
