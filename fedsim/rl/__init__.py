"""Training the learning rank policies: the gymnasium environment (one step = one federated round)
and `fedsim train-policy`. It lives in fedsim, above the server, because it drives whole federated
runs; `policies/` holds only the policies and imports nothing of fedsim but `fedsim.types`."""
