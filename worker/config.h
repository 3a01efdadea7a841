// Configuration structs of worker/ (ModelConfig, DataConfig, InnerOptimizerConfig).
#pragma once

#include "worker/data.h"
#include "worker/inner_optimizer.h"
#include "worker/model.h"
