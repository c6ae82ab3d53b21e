import { randomUUID } from "node:crypto";

import type { CreateWalletInput, EvmTransaction, SigningRequest, SignInput, Wallet } from "../types.js";
import type { SignOptions, WalletsApi } from "./wallets.js";

/** A chain a wallet can be generated for. */
export type MpcChain = NonNullable<CreateWalletInput["chain"]>;

/** The protocol that signs for each chain: ECDSA for EVM chains, Schnorr for the others. */
const PROTOCOL_OF: Record<MpcChain, CreateWalletInput["protocol"]> = {
  ethereum: "cggmp21",
  polygon: "cggmp21",
  bitcoin: "frost-taproot",
  "bitcoin-testnet": "frost-taproot",
  solana: "frost-ed25519",
};

/** Input of {@link MpcApi.generateWallet}: the seed SDKs' shape. */
export interface GenerateWalletInput {
  /** The chain; the protocol follows from it. */
  chain: MpcChain;
  /** Signers needed (at least 2). */
  threshold: number;
  /** Share holders. */
  parties: number;
  /** The wallet's name; `<chain>-<random>` when absent. */
  name?: string;
  /** Which signer nodes hold the shares (by name); the server picks when absent. */
  nodes?: string[];
}

/** Input of {@link MpcApi.sign}: the wallet and what to sign, as `wallets.sign` takes it. */
export type MpcSignInput = SignInput & {
  walletId: string;
  /**
   * An EIP-1559 transaction. Custos reads no chain: `chainId`, `nonce`,
   * `gasLimit`, `maxFeePerGas` and `maxPriorityFeePerGas` are the caller's
   * to give, and a transaction without them is refused (`422`, naming every
   * missing field).
   */
  transaction?: EvmTransaction;
};

/**
 * The seed SDKs' `mpc` namespace over {@link WalletsApi}: the same calls
 * under the names a team moving from them already uses.
 */
export class MpcApi {
  constructor(private readonly wallets: WalletsApi) {}

  /**
   * Generates a wallet (distributed key generation): the protocol follows
   * from the chain (`cggmp21` for EVM chains, `frost-taproot` for Bitcoin,
   * `frost-ed25519` for Solana).
   *
   * @example
   * const wallet = await custos.mpc.generateWallet({ chain: "polygon", threshold: 2, parties: 3 });
   */
  async generateWallet(input: GenerateWalletInput, options?: SignOptions): Promise<Wallet> {
    const protocol = PROTOCOL_OF[input.chain];
    if (protocol === undefined) {
      throw new TypeError(`Custos: no wallet protocol for the chain ${String(input.chain)}`);
    }
    return this.wallets.create(
      {
        name: input.name ?? `${input.chain}-${randomUUID().slice(0, 8)}`,
        protocol,
        chain: input.chain,
        threshold: input.threshold,
        parties: input.parties,
        nodes: input.nodes,
      },
      options,
    );
  }

  /** Signs with a wallet: `wallets.sign(walletId, rest)`. */
  async sign(input: MpcSignInput, options?: SignOptions): Promise<SigningRequest> {
    const { walletId, ...rest } = input;
    return this.wallets.sign(walletId, rest, options);
  }
}
