/* SPDX-License-Identifier: MIT */
/* CUDA device discovery: ordinals, names and PCI bus ids. */
#include <cctype>
#include <cstdio>
#include <cerrno>
#include <cstring>

#include <cuda_runtime.h>

#include "gpu/gpu.h"

extern "C" int dp_gpu_cuda_probe(struct dp_gpu_device_info *out, int max, char *why, size_t why_len)
{
	int n = 0;
	cudaError_t err = cudaGetDeviceCount(&n);

	if (err != cudaSuccess) {
		if (why && why_len)
			snprintf(why, why_len, "no usable CUDA device: %s",
			         cudaGetErrorString(err));
		cudaGetLastError(); /* clear the sticky error */
		return 0;
	}
	if (n == 0 && why && why_len)
		snprintf(why, why_len, "CUDA driver reports no devices");
	int filled = 0;
	for (int i = 0; i < n && filled < max; i++) {
		cudaDeviceProp prop;
		if (cudaGetDeviceProperties(&prop, i) != cudaSuccess)
			continue;
		struct dp_gpu_device_info *d = &out[filled];
		memset(d, 0, sizeof(*d));
		d->index = i;
		snprintf(d->name, sizeof(d->name), "%.95s", prop.name);
		if (cudaDeviceGetPCIBusId(d->pci_bus_id, sizeof(d->pci_bus_id), i) != cudaSuccess)
			d->pci_bus_id[0] = '\0';
		for (char *c = d->pci_bus_id; *c; c++)
			*c = (char)tolower((unsigned char)*c);
		d->total_mem = prop.totalGlobalMem;
		d->cc_major = prop.major;
		d->cc_minor = prop.minor;
		filled++;
	}
	return filled;
}
