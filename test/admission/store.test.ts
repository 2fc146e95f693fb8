import { createMemoryStore } from '../../src/admission/store/memory.js';
import { describeStoreContract } from './store-contract.js';

describeStoreContract('memory', (options) => createMemoryStore(options));
