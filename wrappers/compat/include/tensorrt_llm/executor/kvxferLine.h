// kvxfer compat headers: the TensorRT-LLM release line they declare, one of
//   KVXFER_TRTLLM_LINE  line  interfaces (docs/trtllm.md has the release table)
//   101                 1.1   connect API: getConnectionInfo / connectRemoteAgent,
//                             void TransferStatus::wait(), DataContext = int tag
//   102                 1.2   load API: loadRemoteAgent(name, connectionInfo),
//                             getLocalConnectionInfo; otherwise as 1.1
//   103                 1.3   TransferState wait(timeout_ms), release(); config with
//                             listener, backend params, rank; AgentDesc with VRAM
//                             regions; DataContext with its termination flag,
//                             Connection::activateBuffer, ConnectionManager::isRunning
//   104                 1.4   getLastStatusStr(); config and AgentDesc with bounce fields
// Set by the build (-DKVXFER_TRTLLM_LINE=1.x); the newest line otherwise.
// TensorRT-LLM's own headers have no such file: with them, the build detects
// the line from what they declare.
#pragma once

#ifndef KVXFER_TRTLLM_LINE
#define KVXFER_TRTLLM_LINE 104
#endif

#if KVXFER_TRTLLM_LINE != 101 && KVXFER_TRTLLM_LINE != 102 && KVXFER_TRTLLM_LINE != 103 && KVXFER_TRTLLM_LINE != 104
#error "KVXFER_TRTLLM_LINE must be 101, 102, 103 or 104 (TensorRT-LLM lines 1.1 to 1.4)"
#endif
