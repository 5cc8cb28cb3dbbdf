"""The training engine: M replicas as stacked tensors (`replicas`), the layers written for vmap
(`vmap_layers`), the batched optimizers with their C loops beside their torch reference (`optim`,
`optim_cpu`), and the loop that trains a batch of replicas through a run (`train`)."""
