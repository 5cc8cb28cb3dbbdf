"""Shared parameters: one nn.Parameter (or buffer) reached from several modules, such as a read-out
tied to its embedding (`head.weight = wte.weight`, nanoGPT, Hugging Face's `tie_word_embeddings`).

In plain PyTorch it is one tensor: one entry of `named_parameters()`, its gradient the sum over its
uses, one optimizer state. The replicas keep it so: the stacks hold it under its first name only
(`named_parameters`' own order), and `functional_call` fills the other names from it, as long as the
structure it runs still ties them. Moving a module to the meta device does not: each module gets a
parameter of its own, and the other name would read memory no replica filled. `retie` puts the ties
back.
"""


def tied_names(module):
    """{alias: first name} for every parameter and buffer of `module` reached under more than one name."""
    aliases = {}
    for named in (module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False)):
        first = {}
        for name, tensor in named:
            if tensor is None:
                continue
            key = id(tensor)
            if key in first:
                aliases[name] = first[key]
            else:
                first[key] = name
    return aliases


def retie(module, aliases):
    """Make each alias of `module` the very tensor of its first name again (in place); returns `module`."""
    for alias, name in aliases.items():
        parent, _, leaf = alias.rpartition(".")
        owner = module.get_submodule(parent)
        tensor = module.get_parameter(name) if leaf in owner._parameters else module.get_buffer(name)
        store = owner._parameters if leaf in owner._parameters else owner._buffers
        store[leaf] = tensor
    return module
